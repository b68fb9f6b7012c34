import { parseImageReference } from '../oci/image-reference.ts';

/** A line of an image list that holds no single image reference: named to the operator, never dropped silently. */
export interface BadLine {
  line: number;
  text: string;
  reason: string;
}

/**
 * Image lists as operators have them, one reference per line:
 *   - `kubeadm config images list` / `clusterctl init list-images`: bare references;
 *   - `helm template … | grep image:` lines: `image: "quay.io/cilium/cilium:v1.13"` (quotes, dashes, indentation);
 *   - comments (`#`) and blank lines.
 * Returns the references in order, without duplicates, and every other line with its number and why
 * (a template placeholder `{{ .Values… }}`, two references on one line, anything that is not a reference).
 */
export function readImageList(text: string): { refs: string[]; bad: BadLine[] } {
  const refs: string[] = [];
  const bad: BadLine[] = [];
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    let line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (!line) continue;
    const no = (reason: string) => bad.push({ line: i + 1, text: raw.trim(), reason });
    line = line.replace(/^-\s+/, '');
    const yaml = /^(?:-\s*)?["']?image["']?\s*:\s*(.*)$/i.exec(line);
    if (yaml) line = yaml[1]!.trim();
    line = line.replace(/^["']|["'],?$/g, '').trim();
    if (!line) {
      no('no reference after "image:"');
      continue;
    }
    if (/\{\{|\}\}|\$\{/.test(line)) {
      no('a template placeholder, not a reference (render the chart first)');
      continue;
    }
    if (/\s/.test(line)) {
      no('more than one word: one reference per line');
      continue;
    }
    try {
      parseImageReference(line);
    } catch (err) {
      no((err as Error).message);
      continue;
    }
    if (!refs.includes(line)) refs.push(line);
  }
  return { refs, bad };
}

/** The references of an image list (see readImageList; lines that hold none are left out). */
export function parseImageList(text: string): string[] {
  return readImageList(text).refs;
}
