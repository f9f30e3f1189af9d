"""Test TLS material made with GnuTLS's certtool and psktool (package gnutls-bin).

Directory layout as QEMU and libnbd expect it: ca-cert.pem, server-cert.pem,
server-key.pem for a server; ca-cert.pem, client-cert.pem, client-key.pem for a client;
keys.psk ("username:hexkey" lines) for PSK."""

import os
import subprocess


def _run(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _template(path, lines):
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def make_x509(base, client_cn='client'):
    """Creates base/ca (CA key + cert), base/server and base/client dirs; returns them."""
    ca, server, client = (os.path.join(str(base), d) for d in ('ca', 'server', 'client'))
    for d in (ca, server, client):
        os.makedirs(d, exist_ok=True)
    ca_key, ca_cert = os.path.join(ca, 'ca-key.pem'), os.path.join(ca, 'ca-cert.pem')
    _run('certtool', '--generate-privkey', '--outfile', ca_key)
    _template(os.path.join(ca, 'ca.info'),
              ['cn = fleece test CA', 'ca', 'cert_signing_key', 'expiration_days = 2'])
    _run('certtool', '--generate-self-signed', '--load-privkey', ca_key,
         '--template', os.path.join(ca, 'ca.info'), '--outfile', ca_cert)
    for d, cn, usage in ((server, 'localhost', 'tls_www_server'),
                         (client, client_cn, 'tls_www_client')):
        role = 'server' if d == server else 'client'
        key = os.path.join(d, role + '-key.pem')
        cert = os.path.join(d, role + '-cert.pem')
        info = os.path.join(d, role + '.info')
        _template(info, ['organization = fleece', 'cn = %s' % cn, 'dns_name = localhost',
                         'ip_address = 127.0.0.1', usage, 'encryption_key', 'signing_key',
                         'expiration_days = 2'])
        _run('certtool', '--generate-privkey', '--outfile', key)
        _run('certtool', '--generate-certificate', '--load-ca-certificate', ca_cert,
             '--load-ca-privkey', ca_key, '--load-privkey', key, '--template', info,
             '--outfile', cert)
        with open(ca_cert) as src, open(os.path.join(d, 'ca-cert.pem'), 'w') as dst:
            dst.write(src.read())
    return ca, server, client


def make_psk(base, username='alice'):
    """Creates base/keys.psk with one random key for `username`; returns base."""
    os.makedirs(str(base), exist_ok=True)
    _run('psktool', '-u', username, '-p', os.path.join(str(base), 'keys.psk'))
    return str(base)
