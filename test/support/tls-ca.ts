// A private certificate authority made with openssl, and server certificates it signs for 127.0.0.1 and
// localhost: what an operator gives berth's `tls:` section, and what clients trust via ca.crt.
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TestCa {
  dir: string;
  /** PEM of the CA certificate. */
  caFile: string;
  caKey: string;
  /** A directory holding only ca.crt: skopeo --cert-dir, docker certs.d/HOST. */
  certDir: string;
}

export interface IssuedCert {
  certFile: string;
  keyFile: string;
  /** SHA-256 fingerprint as node's tls reports it (`AB:CD:…`). */
  fingerprint256: string;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export async function makeCa(dir: string, name = 'berth test CA'): Promise<TestCa> {
  await mkdir(dir, { recursive: true });
  const caFile = path.join(dir, 'ca.pem');
  const caKey = path.join(dir, 'ca.key');
  await run('openssl', [
    'req',
    '-x509',
    ...EC,
    '-days',
    '30',
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
    '-keyout',
    caKey,
    '-out',
    caFile,
  ]);
  const certDir = path.join(dir, 'trust');
  await mkdir(certDir, { recursive: true });
  await writeFile(path.join(certDir, 'ca.crt'), await readFile(caFile));
  return { dir, caFile, caKey, certDir };
}

/**
 * A server certificate for 127.0.0.1/localhost signed by `ca`, written to `certFile`/`keyFile`. The files
 * are replaced by rename, so a server re-reading them never sees half a file.
 */
export async function issueServerCert(ca: TestCa, certFile: string, keyFile: string, cn = 'localhost'): Promise<IssuedCert> {
  const tag = `${path.basename(certFile)}-${Date.now()}-${Math.random().toString(16).slice(2)}`;
  const csr = path.join(ca.dir, `${tag}.csr`);
  const ext = path.join(ca.dir, `${tag}.ext`);
  const newKey = path.join(ca.dir, `${tag}.key`);
  const newCert = path.join(ca.dir, `${tag}.crt`);
  await run('openssl', ['req', ...EC, '-subj', `/CN=${cn}`, '-keyout', newKey, '-out', csr]);
  await writeFile(ext, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
  await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca.caFile, '-CAkey', ca.caKey, '-CAcreateserial', '-days', '30', '-extfile', ext, '-out', newCert]);
  await rename(newKey, keyFile);
  await rename(newCert, certFile);
  return { certFile, keyFile, fingerprint256: new X509Certificate(await readFile(certFile)).fingerprint256 };
}
