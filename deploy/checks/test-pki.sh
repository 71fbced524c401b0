#!/usr/bin/env bash
# Makes throw-away TLS files in the layout of the gateway's Secrets, so that
# `gateway check-config`, which loads every file a configuration names, can
# check a rendered gateway.toml (scripts/check-k8s.sh points its
# /etc/carbridge/tls/ paths here). Never for anything else.
#
#   deploy/checks/test-pki.sh DIR
#
# DIR gets gateway-tls's tls.crt, tls.key and ca.crt, and
# gateway-tls-extra's cars.crl (empty, signed by the CA) and tickets.
# Needs openssl.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 30 -subj "/CN=check-k8s test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req "${ec[@]}" -keyout tls.key -out tls.csr -subj "/CN=gateway" 2>/dev/null
printf '%s\n' "subjectAltName=DNS:localhost" "basicConstraints=CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
  -extfile server.ext -out tls.crt 2>/dev/null

: >index.txt
echo 01 >crlnumber
cat >ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = index.txt
crlnumber = crlnumber
default_md = sha256
default_crl_days = 30
CNF
openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.crt -out cars.crl 2>/dev/null
openssl rand -hex 32 >tickets
