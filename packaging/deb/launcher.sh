#!/bin/sh
# @NAME@ from the packaged environment. The environment is found from this
# script's real location, so the package also runs unpacked under another
# root (dpkg --root, dpkg -x, an image being built). -I: no PYTHON* variables,
# user site or working directory on sys.path; -B: /opt stays untouched.
here=$(dirname "$(readlink -f "$0")")
case @NAME@ in
    slm) exec "$here/python" -I -B -m slmd_client.cli "$@" ;;
    *) exec "$here/python" -I -B -m slmd "$@" ;;
esac
