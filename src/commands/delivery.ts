import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { describeError } from '../errors.js';
import type { AppendResult, LogEntry } from '../log/commit-log.js';
import { CommandState, type CommandOutbox, type OutboxCommand, type StoreResult } from '../log/outbox.js';
import { commandPacket, commandProperties, commandTopic, type CommandPacket } from './packet.js';

/** What delivery needs of the MQTT side (ingress implements it). */
export interface CommandOutlet {
  /** Whether a persistent session of `deviceId` is subscribed (QoS ≥ 1) to `topic`. */
  hasDeviceSession(topic: string, deviceId: string): Promise<boolean>;
  /** Publishes through the broker: queued in the sessions of its subscribers, sent to those online. */
  publish(packet: CommandPacket): Promise<void>;
  /** Takes an expired command out of every session queue it is in. */
  dropQueued(packet: CommandPacket): Promise<void>;
}

export interface CommandDeliveryOptions {
  readonly outbox: CommandOutbox;
  readonly outlet: CommandOutlet;
  /** config commands.mqtt */
  readonly mqttTopic: string;
  /** config commands.acks */
  readonly ackTopic: string;
  /**
   * config commands.replies: the Response Topic of commands to MQTT 5 devices ({deviceId},
   * {correlationId}); each command also carries its correlation id as Correlation Data.
   * Undefined: commands go without these properties.
   */
  readonly replyTopic?: string;
  readonly gatewayId: string;
  /** Appends an ack record to the commit log (group commit): resolves once it is durable. */
  readonly appendAck: (entry: LogEntry) => Promise<AppendResult>;
  readonly logger: Logger;
  /** How often expiry and ack retries run without a trigger. */
  readonly sweepIntervalMs?: number;
  /** How often every device with waiting commands is looked at (besides triggers). */
  readonly rescanIntervalMs?: number;
  readonly now?: () => number;
}

export interface CommandCounters {
  /** Stored in the outbox for a served device. */
  stored: number;
  /** For devices this gateway does not serve: skipped, not stored. */
  notServed: number;
  /** Records on the command topic that are no command (no key, no value, a key or correlation id not fit for a topic). */
  invalid: number;
  /** TTL ended before the device acknowledged them: never (again) delivered. */
  expired: number;
  /** Acknowledged (PUBACK) by their device. */
  delivered: number;
  /** Ack records written to the commit log (they reach Kafka exactly once, like telemetry). */
  acked: number;
}

/** An ack record's key in the log's per-reading dedup: one per command, whatever the retries. */
const ACK_DEDUP_WINDOW_MS = 7 * 86400e3;

/**
 * The outbox side of commands, on the main thread: hands stored commands, in the order they were
 * stored, to the MQTT session of their device (aedes queues them durably, sends them to a
 * connected device, and to a persistent session when it reconnects); drops those whose TTL
 * ended; and writes an ack record to the commit log for each command its device acknowledged.
 * A command waits in the outbox while its device has no persistent session subscribed to its
 * topic. Each pass is triggered (a stored batch, a device connecting, an acknowledgement) or
 * runs on a timer; passes never overlap.
 */
export class CommandDelivery {
  readonly counters: CommandCounters = { stored: 0, notServed: 0, invalid: 0, expired: 0, delivered: 0, acked: 0 };
  private running: Promise<void> | undefined;
  private again = false;
  /** Devices to look at in the next pass (they connected, subscribed or got commands). */
  private dirty = new Set<string>();
  /** Look at every device with waiting commands in the next pass (at start, then now and then). */
  private rescan = true;
  private lastRescan = 0;
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  private failing = false;

  constructor(private readonly options: CommandDeliveryOptions) {
    this.timer = setInterval(() => this.kick(), options.sweepIntervalMs ?? 1000);
    this.timer.unref();
  }

  /** Device IDs known to be served (the outbox has them): each is written once. */
  private readonly served = new Set<string>();

  /**
   * These devices are served by this gateway from now on (they connected, or the password file
   * lists them): the consumer keeps their commands.
   */
  serve(deviceIds: Iterable<string>): void {
    const added = [...deviceIds].filter((id) => !this.served.has(id));
    if (added.length === 0) return;
    this.options.outbox.serve(added);
    for (const id of added) this.served.add(id);
  }

  /** The consumer stored a batch. */
  stored(result: StoreResult): void {
    this.counters.stored += result.stored;
    this.counters.notServed += result.notServed;
    this.counters.invalid += result.invalid;
    this.counters.expired += result.expired;
    if (result.stored > 0) this.kick(result.devices);
  }

  /** A device acknowledged a command (the session store marked it delivered). */
  delivered(): void {
    this.counters.delivered++;
    this.kick();
  }

  /** Runs a pass now, or right after the one running; `devices` may take commands now. */
  kick(devices: readonly string[] = []): void {
    if (this.closed) return;
    for (const d of devices) this.dirty.add(d);
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.pass().finally(() => {
      this.running = undefined;
      if (this.again && !this.closed) {
        this.again = false;
        this.kick();
      }
    });
  }

  /** Commands waiting (not yet acknowledged), in a session, and acknowledged with the ack record to write. */
  pending(): { waiting: number; inSession: number; toAck: number } {
    const c = this.options.outbox.counts();
    return { waiting: c[CommandState.Stored], inSession: c[CommandState.Handed], toAck: c[CommandState.Delivered] };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.running;
  }

  private async pass(): Promise<void> {
    try {
      await this.expire();
      await this.hand();
      await this.writeAcks();
      if (this.failing) this.options.logger.info('command delivery works again');
      this.failing = false;
    } catch (err) {
      // The log or the session tables failed (disk full...): the outbox is unchanged, the next
      // pass tries again. One line per failure spell.
      if (!this.failing) this.options.logger.error({ err: describeError(err) }, 'command delivery failed; retrying every second');
      this.failing = true;
      this.rescan = true;
    }
  }

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  private packetOf(c: OutboxCommand): CommandPacket {
    const { mqttTopic, replyTopic } = this.options;
    const properties = replyTopic === undefined ? undefined : commandProperties(replyTopic, c.deviceId, c.correlationId, c.contentType);
    return commandPacket(c.deviceId, c.seq, commandTopic(mqttTopic, c.deviceId, c.correlationId), c.payload, c.expiresAt, properties);
  }

  private async expire(): Promise<void> {
    const { outbox, outlet } = this.options;
    for (const { seq, state } of outbox.expired(this.now(), 1000)) {
      if (state === CommandState.Handed) {
        const c = outbox.get(seq);
        if (c) await outlet.dropQueued(this.packetOf(c));
      }
      outbox.remove(seq);
      this.counters.expired++;
    }
  }

  /**
   * Hands waiting commands to their devices' sessions, each device's in order: of the devices
   * triggered since the last pass, or of all that have waiting commands when a rescan is due.
   */
  private async hand(): Promise<void> {
    const { outbox } = this.options;
    if (this.now() - this.lastRescan >= (this.options.rescanIntervalMs ?? 30_000)) this.rescan = true;
    let devices: Iterable<string> = this.dirty;
    if (this.rescan) {
      devices = outbox.waitingDevices();
      this.rescan = false;
      this.lastRescan = this.now();
    }
    this.dirty = new Set();
    let failure: unknown;
    for (const device of devices) {
      // One device's failure (its publish refused) does not hold the others back.
      await this.handTo(device).catch((err: unknown) => {
        failure ??= err;
      });
    }
    if (failure !== undefined) throw failure;
  }

  private async handTo(deviceId: string): Promise<void> {
    const { outbox, outlet } = this.options;
    let after = 0;
    for (;;) {
      const waiting = outbox.waitingFor(deviceId, after, 100);
      if (waiting.length === 0) return;
      for (const c of waiting) {
        after = c.seq;
        if (c.expiresAt <= this.now()) continue;
        const packet = this.packetOf(c);
        // A command goes only to a persistent session of its device: one that is acknowledged
        // there and survives the device's (and the gateway's) restarts. Until then it waits,
        // and so do the device's later commands (order).
        if (!(await outlet.hasDeviceSession(packet.topic, c.deviceId))) return;
        // Marked first: a gateway that dies before the broker queued it finds it handed with no
        // queue entry at the next start, and it waits again (SessionTables.reconcileCommands);
        // marked after, it could be queued twice.
        outbox.markHanded(c.seq);
        try {
          await outlet.publish(packet);
        } catch (err) {
          outbox.markWaiting(c.seq);
          throw err;
        }
      }
    }
  }

  /** One ack record per delivered command, through the log (exactly once, like telemetry). */
  private async writeAcks(): Promise<void> {
    const { outbox, appendAck, ackTopic, gatewayId } = this.options;
    for (;;) {
      const delivered = outbox.delivered(100);
      if (delivered.length === 0) return;
      for (const c of delivered) {
        const deliveredAt = c.deliveredAt ?? this.now();
        const commandId = `${c.kafkaTopic}/${c.kafkaPartition}/${c.kafkaOffset}`;
        const entry: LogEntry = {
          receivedAt: deliveredAt,
          route: '$commands',
          kafkaTopic: ackTopic,
          deviceId: c.deviceId,
          mqttTopic: commandTopic(this.options.mqttTopic, c.deviceId, c.correlationId),
          qos: 1,
          payload: Buffer.from(
            JSON.stringify({
              deviceId: c.deviceId,
              correlationId: c.correlationId,
              gatewayId,
              deliveredAt: new Date(deliveredAt).toISOString(),
              command: { topic: c.kafkaTopic, partition: c.kafkaPartition, offset: c.kafkaOffset },
            }),
          ),
          headers: {
            'correlation-id': c.correlationId,
            'delivered-at': new Date(deliveredAt).toISOString(),
            'command-offset': commandId,
          },
          // If the gateway dies between this append and the removal below, the next pass
          // appends again: the log drops the copy (check mode: one key per command).
          dedup: {
            key: createHash('sha1').update(`command-ack\0${commandId}`).digest(),
            mode: 'check',
            windowMs: ACK_DEDUP_WINDOW_MS,
          },
        };
        const result = await appendAck(entry);
        outbox.remove(c.seq);
        if (result !== 'duplicate') this.counters.acked++;
      }
    }
  }
}
