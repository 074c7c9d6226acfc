#!/usr/bin/python3
"""Servers and clients for the Service end-to-end tests, run inside pod namespaces.

  serve NAME TCP_PORT UDP_PORT [PUSH_DIR]
                                 TCP: greet each connection with "NAME PEER_IP", then
                                 answer each line with "NAME LINE"; with PUSH_DIR, send
                                 "NAME pushed" unasked once PUSH_DIR/push-PEER_PORT
                                 exists (the server speaks first). UDP: answer each
                                 datagram with "NAME PEER_IP".
  connect IP PORT N              N TCP connections one after another; prints a JSON
                                 list of the greetings' names.
  greet IP PORT                  one TCP connection; prints JSON {"greeting"}.
  udp IP PORT                    one datagram; prints JSON {"reply", "from"}.
  refused IP PORT                one TCP connect; prints JSON {"error": errno name}.
  udp_refused IP PORT            a datagram on a connected UDP socket, then a receive;
                                 prints JSON {"error": errno name} (ECONNREFUSED when
                                 an ICMP port unreachable came back).
  await_push IP PORT DIR         one TCP connection: writes {"greeting", "port"} (its
                                 own port) to DIR/held; once DIR/listen exists, waits up to 5 s for a line
                                 the server sends unasked, writes it (or the error) to
                                 DIR/pushed, sends "after", writes the answer to
                                 DIR/answer.
  hold IP PORT N DIR             N TCP connections kept open; writes their greetings to
                                 DIR/held, waits for DIR/go, sends a line on each and
                                 writes the answers (or errors) to DIR/answers.
"""

import errno
import json
import os
import socket
import sys
import threading
import time


def serve(name, tcp_port, udp_port, push_dir=None):
    def push_when_asked(conn, peer):
        flag = os.path.join(push_dir, f"push-{peer[1]}")
        while not os.path.exists(flag):
            time.sleep(0.02)
        try:
            conn.sendall(f"{name} pushed\n".encode())
        except OSError:
            pass

    def tcp_client(conn, peer):
        with conn:
            conn.sendall(f"{name} {peer[0]}\n".encode())
            if push_dir:
                threading.Thread(target=push_when_asked, args=(conn, peer), daemon=True).start()
            f = conn.makefile("rb")
            for line in f:
                conn.sendall(f"{name} {line.decode().strip()}\n".encode())

    def tcp_loop():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", tcp_port))
        s.listen(512)
        while True:
            conn, peer = s.accept()
            threading.Thread(target=tcp_client, args=(conn, peer), daemon=True).start()

    def udp_loop():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", udp_port))
        while True:
            _, peer = s.recvfrom(2048)
            s.sendto(f"{name} {peer[0]}".encode(), peer)

    threading.Thread(target=udp_loop, daemon=True).start()
    tcp_loop()


def greeting(s):
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        line += chunk
    return line.decode().strip()


def connect(ip, port, n):
    names = []
    for _ in range(n):
        with socket.create_connection((ip, port), timeout=5) as s:
            names.append(greeting(s).split()[0])
    print(json.dumps(names))


def greet(ip, port, src_port=0):
    with socket.create_connection((ip, port), timeout=5, source_address=("", src_port)) as s:
        print(json.dumps({"greeting": greeting(s)}))


def udp(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(3):
        s.sendto(b"hello", (ip, port))
        try:
            data, peer = s.recvfrom(2048)
            print(json.dumps({"reply": data.decode(), "from": f"{peer[0]}:{peer[1]}"}))
            return
        except socket.timeout:
            continue
    print(json.dumps({"reply": None, "from": None}))


def refused(ip, port):
    try:
        socket.create_connection((ip, port), timeout=5).close()
        print(json.dumps({"error": None}))
    except OSError as e:
        name = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
        print(json.dumps({"error": name}))


def udp_refused(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((ip, port))
    try:
        s.send(b"anyone?")
        s.recv(2048)
        print(json.dumps({"error": None}))
    except socket.timeout:
        print(json.dumps({"error": "timeout"}))
    except OSError as e:
        print(json.dumps({"error": errno.errorcode.get(e.errno, str(e.errno))}))


def write_json(directory, name, value):
    with open(os.path.join(directory, name + ".tmp"), "w") as f:
        json.dump(value, f)
    os.rename(os.path.join(directory, name + ".tmp"), os.path.join(directory, name))


def await_push(ip, port, directory):
    s = socket.create_connection((ip, port), timeout=5)
    write_json(directory, "held", {"greeting": greeting(s), "port": s.getsockname()[1]})
    while not os.path.exists(os.path.join(directory, "listen")):
        time.sleep(0.02)
    s.settimeout(5)
    try:
        pushed = greeting(s)
    except socket.timeout:
        pushed = "error timeout"
    except OSError as e:
        pushed = f"error {errno.errorcode.get(e.errno, e.errno)}"
    write_json(directory, "pushed", pushed)
    try:
        s.sendall(b"after\n")
        answer = greeting(s)
    except OSError as e:
        answer = f"error {errno.errorcode.get(e.errno, e.errno)}"
    write_json(directory, "answer", answer)


def hold(ip, port, n, directory):
    conns = [socket.create_connection((ip, port), timeout=5) for _ in range(n)]
    held = [greeting(s) for s in conns]
    with open(os.path.join(directory, "held.tmp"), "w") as f:
        json.dump(held, f)
    os.rename(os.path.join(directory, "held.tmp"), os.path.join(directory, "held"))
    while not os.path.exists(os.path.join(directory, "go")):
        time.sleep(0.05)
    answers = []
    for i, s in enumerate(conns):
        try:
            s.sendall(f"ping{i}\n".encode())
            answers.append(greeting(s))
        except OSError as e:
            answers.append(f"error {e}")
    with open(os.path.join(directory, "answers.tmp"), "w") as f:
        json.dump(answers, f)
    os.rename(os.path.join(directory, "answers.tmp"), os.path.join(directory, "answers"))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], int(args[1]), int(args[2]), args[3] if len(args) > 3 else None)
    elif cmd == "connect":
        connect(args[0], int(args[1]), int(args[2]))
    elif cmd == "greet":
        greet(args[0], int(args[1]), int(args[2]) if len(args) > 2 else 0)
    elif cmd == "udp":
        udp(args[0], int(args[1]))
    elif cmd == "refused":
        refused(args[0], int(args[1]))
    elif cmd == "udp_refused":
        udp_refused(args[0], int(args[1]))
    elif cmd == "await_push":
        await_push(args[0], int(args[1]), args[2])
    elif cmd == "hold":
        hold(args[0], int(args[1]), int(args[2]), args[3])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
