#!/usr/bin/env bash
# Pack auditgap for a host without network: the project tree and the Python packages the CLI
# needs (ansible-core, ansible-runner and their dependencies) copied from the controller's
# venv (same CPython minor version and glibc as the Debian 12 guest). Wrappers put them on
# PYTHONPATH for the guest's /usr/bin/python3. Usage: bundle.sh OUT.tar.gz
set -euo pipefail
out=$(realpath -m "$1")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
site=$(ls -d "$root"/.venv/lib/python3.*/site-packages)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/auditgap/site" "$work/auditgap/bin" "$work/auditgap/collections/ansible_collections/auditgap"
cd "$root"
cp -r auditgap playbooks roles plugins meta galaxy.yml ansible.cfg "$work/auditgap/"
find "$work/auditgap" -name __pycache__ -prune -exec rm -rf {} +
ln -s ../../.. "$work/auditgap/collections/ansible_collections/auditgap/fleet"
for pkg in ansible ansible_core-*.dist-info ansible_runner ansible_runner-*.dist-info jinja2 jinja2-*.dist-info \
           markupsafe markupsafe-*.dist-info yaml _yaml [Pp][Yy][Yy][Aa][Mm][Ll]-*.dist-info packaging packaging-*.dist-info \
           resolvelib resolvelib-*.dist-info cryptography cryptography-*.dist-info cffi cffi-*.dist-info \
           _cffi_backend.cpython-*.so pycparser pycparser-*.dist-info pexpect pexpect-*.dist-info ptyprocess \
           ptyprocess-*.dist-info daemon python_daemon-*.dist-info lockfile lockfile-*.dist-info; do
  cp -r "$site"/$pkg "$work/auditgap/site/"
done
find "$work/auditgap/site" -name __pycache__ -prune -exec rm -rf {} +
cat > "$work/auditgap/bin/auditgap" <<'SH'
#!/bin/sh
export PYTHONPATH=/opt/auditgap:/opt/auditgap/site PATH=/opt/auditgap/bin:$PATH
exec /usr/bin/python3 -m auditgap.cli "$@"
SH
cat > "$work/auditgap/bin/ansible-playbook" <<'SH'
#!/bin/sh
export PYTHONPATH=/opt/auditgap:/opt/auditgap/site
exec /usr/bin/python3 -c 'import sys; sys.argv[0] = "ansible-playbook"; from ansible.cli.playbook import main; main()' "$@"
SH
chmod 0755 "$work/auditgap/bin/"*
tar -C "$work" -czf "$out" auditgap
