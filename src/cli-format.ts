// Plain-text formatting for the CLI's tables (edgebridge status, backlog): no colours, fixed columns.

/** Bytes in binary units: "512 B", "1.5 KiB", "12.3 MiB". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** An age in whole seconds, two units at most: "45s", "3m12s", "2h05m", "3d04h". */
export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const pad = (n: number): string => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86_400)}d${pad(Math.floor(s / 3600) % 24)}h`;
}

/** A count with thousands separators: "12,345". */
export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

/** "backlogOldestAgeSeconds" -> "backlog oldest age seconds": a status key as a table label. */
export function labelOf(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase();
}

/**
 * Rows as aligned columns two spaces apart; `right` lists the columns aligned right (numbers).
 * Cells are single-line: line breaks in them are shown as spaces.
 */
/**
 * A cell as a terminal shows it: line breaks flattened, control characters (C0, DEL, C1)
 * escaped as \xNN, bidirectional overrides as \uNNNN and backslashes doubled — device IDs and
 * topics come from devices, and an escape sequence in one must not clear an operator's screen,
 * forge rows or reorder a cell.
 */
export function printable(cell: string): string {
  return cell
    .replace(/\s*[\r\n]+\s*/g, ' ')
    .replace(/[\\\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, (c) =>
      c === '\\' ? '\\\\' : c.charCodeAt(0) > 0xff ? `\\u${c.charCodeAt(0).toString(16)}` : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
    );
}

export function formatTable(rows: readonly (readonly string[])[], right: readonly number[] = []): string {
  const clean = rows.map((row) => row.map(printable));
  const widths: number[] = [];
  for (const row of clean) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return clean
    .map((row) =>
      row
        .map((cell, i) => (right.includes(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .map((line) => `${line}\n`)
    .join('');
}
