#!/usr/bin/env python3
"""A minimal Mesos v1 HTTP executor (stdlib only) that the wrap-mode tests run INSIDE a guest.

It subscribes to MESOS_AGENT_ENDPOINT, answers LAUNCH with TASK_RUNNING then TASK_FINISHED
(data: JSON with the guest's hostname and kernel boot id, proving where it ran) and writes
result.txt into its sandbox. INNER_MODE (from the ExecutorInfo's environment) changes that:
  finish (default)  exit 0 once the terminal update is acknowledged
  wait              keep the task running until SHUTDOWN; then write got-shutdown and exit 0
  crash             exit 3 right after SUBSCRIBED, before running anything
"""

import base64
import http.client
import json
import os
import socket
import sys
import time
import uuid

HOST, PORT = os.environ["MESOS_AGENT_ENDPOINT"].rsplit(":", 1)
IDS = {"framework_id": {"value": os.environ["MESOS_FRAMEWORK_ID"]},
       "executor_id": {"value": os.environ["MESOS_EXECUTOR_ID"]}}
MODE = os.environ.get("INNER_MODE", "finish")
PATH = "/api/v1/executor"


def post(body):
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=10)
    conn.request("POST", PATH, json.dumps(body), {"Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status


def update(task_id, state, data=None):
    raw = uuid.uuid4().bytes
    status = {"task_id": {"value": task_id}, "state": state, "source": "SOURCE_EXECUTOR",
              "uuid": base64.b64encode(raw).decode(), "timestamp": time.time()}
    if data is not None:
        status["data"] = base64.b64encode(data).decode()
    post(dict(IDS, type="UPDATE", update={"status": status}))
    return status["uuid"]


def events():
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=3600)
    conn.request("POST", PATH, json.dumps(dict(IDS, type="SUBSCRIBE", subscribe={})),
                 {"Content-Type": "application/json", "Accept": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        sys.exit(f"SUBSCRIBE refused: {resp.status}")
    while True:
        size = b""
        while not size.endswith(b"\n"):
            byte = resp.read(1)
            if not byte:
                return
            size += byte
        yield json.loads(resp.read(int(size)))


def facts():
    with open("/proc/sys/kernel/random/boot_id") as fh:
        boot_id = fh.read().strip()
    return {"hostname": socket.gethostname(), "boot_id": boot_id, "cwd": os.getcwd(),
            "libprocess_ip": os.environ.get("LIBPROCESS_IP", "")}


def main():
    terminal = None
    for event in events():
        kind = event.get("type")
        if kind == "SUBSCRIBED" and MODE == "crash":
            sys.exit(3)
        elif kind == "LAUNCH":
            task_id = event["launch"]["task"]["task_id"]["value"]
            update(task_id, "TASK_RUNNING")
            with open("result.txt", "w") as fh:
                fh.write(json.dumps(facts()))
            if MODE == "finish":
                terminal = update(task_id, "TASK_FINISHED", json.dumps(facts()).encode())
        elif kind == "ACKNOWLEDGED" and event["acknowledged"]["uuid"] == terminal:
            return
        elif kind == "SHUTDOWN":
            with open("got-shutdown", "w") as fh:
                fh.write("SHUTDOWN received\n")
            return


if __name__ == "__main__":
    main()
