"""A real SMTP server for the email sink tests (aiosmtpd).

usage: smtp_server.py PORT MAILDIR [--starttls CERT KEY] [--smtps CERT KEY] [--auth USER:PASSWORD]

Messages are stored in MAILDIR (maildir format). With --auth, AUTH
PLAIN/LOGIN is required and only USER:PASSWORD is accepted.
"""
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    port, maildir = int(sys.argv[1]), sys.argv[2]
    args = sys.argv[3:]
    kwargs = {}
    ctx = None
    while args:
        flag = args.pop(0)
        if flag in ("--starttls", "--smtps"):
            cert, key = args.pop(0), args.pop(0)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            if flag == "--starttls":
                kwargs["tls_context"] = ctx
                kwargs["require_starttls"] = True
            else:
                kwargs["ssl_context"] = ctx
        elif flag == "--auth":
            user, password = args.pop(0).split(":", 1)

            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = (
                    isinstance(auth_data, LoginPassword)
                    and auth_data.login.decode() == user
                    and auth_data.password.decode() == password
                )
                return AuthResult(success=ok)

            kwargs["authenticator"] = authenticator
            kwargs["auth_required"] = True
            kwargs["auth_require_tls"] = False
    controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


main()
