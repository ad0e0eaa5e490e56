"""The SFTP subsystem of the test SSH server (tests/test_sharing_ssh.py): OpenSSH's own sftp-server
behind a link that a test can slow down and cut.

    Subsystem sftp <python> tests/sharing/slow_sftp.py LINK      (sshd_config; LINK: a folder)

With neither LINK/rate nor LINK/cut present the sftp-server is exec'd at once (no proxy, no delay).
LINK/rate (its text: bytes per second): what the client sends reaches the sftp-server at that rate, so
an upload of a few files takes seconds (the server's replies are not slowed down). LINK/cut: the link
is down; every session ends at once, whatever the client had sent and the sftp-server had not yet
received is lost (a rename that would have completed an upload, say), and new sessions fail.

Only a cut can interrupt an upload half-way: the client hands its requests to SSH far ahead of the
slow link (SSH's channel window is megabytes), so killing the client alone would not stop the
requests it had already sent, and the upload would complete on the server after it.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time

CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server",
              "/usr/lib/ssh/sftp-server")


def main() -> int:
    server = next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)
    if server is None:
        print(f"slow_sftp.py: no sftp-server among {CANDIDATES}", file=sys.stderr)
        return 1
    rate_file, cut = os.path.join(sys.argv[1], "rate"), os.path.join(sys.argv[1], "cut")
    if os.path.exists(cut):
        return 1
    if not os.path.exists(rate_file):
        os.execv(server, [server])
    with open(rate_file) as f:
        rate = float(f.read().strip() or 20000)
    child = subprocess.Popen([server], stdin=subprocess.PIPE, stdout=sys.stdout.fileno(), bufsize=0)
    try:
        while True:
            if os.path.exists(cut):
                child.kill()  # what it has not received is lost
                return 1
            if not select.select([sys.stdin.fileno()], [], [], 0.05)[0]:
                continue
            chunk = os.read(sys.stdin.fileno(), 4096)
            if not chunk:
                break
            time.sleep(len(chunk) / rate)
            if not os.path.exists(cut):
                child.stdin.write(chunk)
        child.stdin.close()
    except BrokenPipeError:
        pass
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
