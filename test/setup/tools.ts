import { ensureChromium } from '../helpers/chromium.js';
import { mosquittoTool } from '../helpers/mosquitto.js';

/**
 * The Debian programs the suites use as real peers: `mosquitto_passwd` (password files the gateway
 * must read), `mosquitto_pub`/`mosquitto_sub` (clients), `mosquitto` (the reference broker), and
 * `chromium`, which the status page's browser test drives headless through playwright-core.
 * Installed here once with apt-get if missing; the run fails with the reason if that fails.
 */
export default function setup(): void {
  for (const tool of ['mosquitto', 'mosquitto_passwd', 'mosquitto_pub', 'mosquitto_sub'] as const) mosquittoTool(tool);
  ensureChromium();
}
