#!/usr/bin/env bash
# A local certificate authority and the certificates a demo or test stack needs (openssl only).
#
#   ops/demo_pki.sh DIR                       make DIR/ca.crt + DIR/ca.key (once; kept if present)
#   ops/demo_pki.sh DIR NAME SAN[,SAN…]       issue DIR/NAME.crt + DIR/NAME.key signed by that CA
#                                             e.g. ops/demo_pki.sh var/pki web DNS:localhost,IP:127.0.0.1
#
# For demos and tests only: a hospital uses certificates from its own PKI (README "Deployment").
# Leaf certificates serve as both TLS server and client certificates (mutual TLS for DICOM/MLLP).
set -euo pipefail

dir=${1:?usage: $0 DIR [NAME SANS]}
name=${2:-}
sans=${3:-}
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -sha256 \
    -subj "/O=medrega-pacs demo/CN=medrega-pacs demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  chmod 644 "$dir/ca.crt"
fi
[ -n "$name" ] || exit 0
[ -n "$sans" ] || { echo "$0: NAME needs subjectAltNames (DNS:host,IP:addr)" >&2; exit 2; }
[[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "$0: bad certificate name: $name" >&2; exit 2; }

ext=$(mktemp)
trap 'rm -f "$ext" "$dir/$name.csr"' EXIT
cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans
EXT
openssl req -new -newkey rsa:2048 -nodes -subj "/O=medrega-pacs demo/CN=$name" \
  -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 30 -sha256 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
chmod 644 "$dir/$name.crt"
