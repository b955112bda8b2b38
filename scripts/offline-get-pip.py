"""Stand-in for pip's get-pip.py bootstrap used by ansible-test.

ansible-test downloads get-pip.py from a host this machine cannot reach; this
script does the same job with the interpreter's bundled ensurepip and the
package index pip is already configured for. scripts/sanity installs it into
ansible-test's cache when the real one is absent.
"""
import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY = {'--no-setuptools', '--no-wheel'}

saved_env = dict(os.environ)
ensurepip.bootstrap(upgrade=True)  # this disables pip's configuration in os.environ
os.environ.clear()
os.environ.update(saved_env)
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install'] + args))
