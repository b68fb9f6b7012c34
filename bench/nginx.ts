// nginx serving the bench's static tree at the registry paths (/v2/<name>/blobs/<digest>) with sendfile:
// the limit for serving cached bytes. A private nginx.conf in a temp dir, `nginx -c FILE -g 'daemon off;'`.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';

export interface NginxConfInput {
  dir: string;
  www: string;
  port: number;
  /** Content-Type for /v2/<name>/manifests/<tag> files. */
  manifestType: string;
}

export async function writeNginxConf(c: NginxConfInput): Promise<string> {
  const file = path.join(c.dir, 'nginx.conf');
  const t = (name: string): string => path.join(c.dir, name);
  const conf = `# berth bench: static blobs with sendfile
${process.getuid?.() === 0 ? 'user root root;  # the files live in 0700 temp dirs' : ''}
worker_processes auto;
pid ${t('nginx.pid')};
error_log ${t('error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  client_body_temp_path ${t('client_body')};
  proxy_temp_path ${t('proxy')};
  fastcgi_temp_path ${t('fastcgi')};
  uwsgi_temp_path ${t('uwsgi')};
  scgi_temp_path ${t('scgi')};
  types { }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${c.port};
    root ${c.www};
    location /v2/ {
      add_header Docker-Distribution-API-Version registry/2.0;
      location ~ /manifests/ { default_type ${c.manifestType}; }
    }
  }
}
`;
  await writeFile(file, conf);
  return file;
}
