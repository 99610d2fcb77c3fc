/** Human-readable byte counts: 12.3 MB, 1.50 GB ('?' when unknown). */
export function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '?';
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

/**
 * A plain-text table: columns padded to their widest cell, two spaces apart. `right` lists the
 * columns aligned right (numbers); trailing blanks are trimmed.
 */
export function table(rows: readonly (readonly string[])[], options: { right?: readonly number[] } = {}): string {
  if (rows.length === 0) return '';
  const right = new Set(options.right ?? []);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => (right.has(c) ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join('  ').trimEnd()).join('\n');
}

/** A duration for ETAs: 42 s, 7 min 05 s, 3 h 12 min. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}
