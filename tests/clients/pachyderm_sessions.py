"""Traffic only: a session of one of Pachyderm's own Python clients (pachyderm-sdk, or the
older python-pachyderm) against a pachd address. Prints one JSON line per step with what the
client saw; tests/pachyderm_clients.rs holds the verdict.

usage: pachyderm_sessions.py {sdk|python-pachyderm} HOST PORT CA TOKEN EXPIRED_TOKEN
"""

import json
import sys

import grpc


def outcome(step, call):
    """Runs call() and reports its value or its gRPC status, never raising."""
    try:
        value = call()
        print(json.dumps({"step": step, "ok": True, "value": value}), flush=True)
    except grpc.RpcError as e:
        print(json.dumps({"step": step, "ok": False, "code": e.code().name,
                          "details": e.details() or ""}), flush=True)
    except Exception as e:  # the SDK turns some statuses into its own exceptions
        print(json.dumps({"step": step, "ok": False, "code": type(e).__name__,
                          "details": str(e)}), flush=True)


def sdk_session(host, port, ca, token, expired):
    from pachyderm_sdk import Client

    def client(auth_token):
        # An empty string, not None: None makes the SDK look for a token in the environment.
        return Client(host=host, port=port, root_certs=ca, auth_token=auth_token or "")

    anonymous = client(None)
    outcome("version", lambda: anonymous.get_version().major)
    outcome("who_am_i_without_token", lambda: anonymous.auth.who_am_i().username)
    outcome("list_repo_without_token", lambda: len(list(anonymous.pfs.list_repo())))
    signed_in = client(token)
    outcome("who_am_i", lambda: signed_in.auth.who_am_i().username)
    outcome("list_repo", lambda: len(list(signed_in.pfs.list_repo())))
    stale = client(expired)
    outcome("who_am_i_expired", lambda: stale.auth.who_am_i().username)
    outcome("list_repo_expired", lambda: len(list(stale.pfs.list_repo())))
    outcome("list_repo_bad_token", lambda: len(list(client("not-a-token").pfs.list_repo())))


def python_pachyderm_session(host, port, ca, token, expired):
    import python_pachyderm

    def client(auth_token):
        return python_pachyderm.Client(host=host, port=port, root_certs=ca, tls=True,
                                       auth_token=auth_token, use_default_host=False)

    anonymous = client(None)
    outcome("version", lambda: anonymous.get_remote_version().major)
    outcome("who_am_i_without_token", lambda: anonymous.who_am_i().username)
    outcome("list_repo_without_token", lambda: len(list(anonymous.list_repo())))
    signed_in = client(token)
    outcome("who_am_i", lambda: signed_in.who_am_i().username)
    outcome("list_repo", lambda: len(list(signed_in.list_repo())))
    stale = client(expired)
    outcome("who_am_i_expired", lambda: stale.who_am_i().username)
    outcome("list_repo_expired", lambda: len(list(stale.list_repo())))
    outcome("list_repo_bad_token", lambda: len(list(client("not-a-token").list_repo())))


def main():
    which, host, port, ca_path, token, expired = sys.argv[1:7]
    with open(ca_path, "rb") as f:
        ca = f.read()
    session = sdk_session if which == "sdk" else python_pachyderm_session
    session(host, int(port), ca, token, expired)


if __name__ == "__main__":
    main()
