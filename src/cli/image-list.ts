/**
 * Image lists as operators have them, one reference per line:
 *   - `kubeadm config images list` / `clusterctl init list-images`: bare references;
 *   - `helm template … | grep image:` lines: `image: "quay.io/cilium/cilium:v1.13"` (quotes, dashes, indentation);
 *   - comments (`#`) and blank lines.
 * Returns the references in order, without duplicates.
 */
export function parseImageList(text: string): string[] {
  const out: string[] = [];
  for (const raw of text.split(/\r?\n/)) {
    let line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (!line) continue;
    line = line.replace(/^-\s+/, '');
    const yaml = /^(?:-\s*)?["']?image["']?\s*:\s*(.*)$/i.exec(line);
    if (yaml) line = yaml[1]!.trim();
    line = line.replace(/^["']|["'],?$/g, '').trim();
    if (!line || /\s/.test(line)) continue;
    if (!out.includes(line)) out.push(line);
  }
  return out;
}
