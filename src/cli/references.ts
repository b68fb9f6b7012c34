import { readFileSync } from 'node:fs';
import { parseImageList } from './image-list.ts';

/** References from `-f FILE` (`-` is standard input) and the command line, in that order, without duplicates. */
export function collectReferences(file: string | undefined, args: string[]): string[] {
  const refs: string[] = [];
  if (file !== undefined) refs.push(...parseImageList(readFileSync(file === '-' ? 0 : file, 'utf8')));
  for (const a of args) if (!refs.includes(a)) refs.push(a);
  if (refs.length === 0) throw new Error('no image references: give some as arguments or with -f FILE');
  return refs;
}
