import { readFileSync } from 'node:fs';
import { readImageList } from './image-list.ts';

/**
 * References from `-f FILE` (`-` is standard input) and the command line, in that order, without
 * duplicates. A list line that holds no reference is named with its line number; it stops the command
 * unless `skipBadLines` (then it is a warning on stderr).
 */
export function collectReferences(file: string | undefined, args: string[], skipBadLines = false): string[] {
  const refs: string[] = [];
  if (file !== undefined) {
    const list = readImageList(readFileSync(file === '-' ? 0 : file, 'utf8'));
    const where = file === '-' ? 'stdin' : file;
    const lines = list.bad.map((b) => `${where}:${b.line}: ${JSON.stringify(b.text)}: ${b.reason}`);
    if (lines.length > 0 && !skipBadLines) {
      throw new Error(`${lines.length} line(s) of the image list hold no image reference (--skip-bad-lines to go on without them):\n  ${lines.join('\n  ')}`);
    }
    for (const l of lines) process.stderr.write(`${new Date().toISOString()} skipped ${l}\n`);
    refs.push(...list.refs);
  }
  for (const a of args) if (!refs.includes(a)) refs.push(a);
  if (refs.length === 0) throw new Error('no image references: give some as arguments or with -f FILE');
  return refs;
}
