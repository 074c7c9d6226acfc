#!/usr/bin/python3
"""Floods for tests/attacks.rs, run inside a pod's namespace (no scapy: raw sockets and
prebuilt frames, for speed).

  flood_tool.py macs IFACE DST_MAC SRC_IP DST_IP COUNT
      COUNT UDP frames, each from another random source MAC; prints {"sent": n}.
  flood_tool.py to-mac IFACE SRC_MAC DST_MAC SRC_IP DST_IP COUNT
      COUNT UDP frames from SRC_MAC (the pod's own) to DST_MAC; prints {"sent": n}.
  flood_tool.py flows VIP PORT COUNT
      COUNT UDP datagrams to VIP:PORT, each from a new source port (a new flow each);
      prints {"sent": n}.
  flood_tool.py hold VIP PORT DIR
      one TCP connection to VIP:PORT, kept: writes the greeting to DIR/held, then for
      each line in DIR/go... waits for DIR/go, sends "again\\n", writes the answer to
      DIR/answer (or the error).
"""

import json
import os
import random
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def macs(iface, dst_mac, src_ip, dst_ip, count, src_mac=None):
    dst = bytes.fromhex(dst_mac.replace(":", ""))
    fixed = bytes.fromhex(src_mac.replace(":", "")) if src_mac else None
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 18, 0, 0, 64, 17, 0,
                               socket.inet_aton(src_ip), socket.inet_aton(dst_ip)))
    ip[10:12] = struct.pack("!H", checksum(bytes(ip)))
    udp = struct.pack("!HHHH", 4000, 9, 8 + 18, 0) + b"m" * 18
    tail = b"\x08\x00" + bytes(ip) + udp
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    rnd = random.Random(7)
    sent = 0
    for _ in range(count):
        src = fixed or bytes([0x02]) + rnd.randbytes(5)
        try:
            s.send(dst + src + tail)
            sent += 1
        except BlockingIOError:
            pass
        except OSError:
            time.sleep(0.0005)
    print(json.dumps({"sent": sent}))


def flows(vip, port, count):
    sent = 0
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"f", (vip, port))
            sent += 1
        finally:
            s.close()
    print(json.dumps({"sent": sent}))


def hold(vip, port, d):
    c = socket.create_connection((vip, port), timeout=5)
    f = c.makefile("rwb")
    greeting = f.readline().decode().strip()
    with open(os.path.join(d, "held.tmp"), "w") as out:
        out.write(greeting)
    os.rename(os.path.join(d, "held.tmp"), os.path.join(d, "held"))
    while not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.05)
    try:
        f.write(b"again\n")
        f.flush()
        answer = f.readline().decode().strip()
    except OSError as e:
        answer = "error: %s" % e
    with open(os.path.join(d, "answer.tmp"), "w") as out:
        out.write(answer)
    os.rename(os.path.join(d, "answer.tmp"), os.path.join(d, "answer"))


def main():
    cmd = sys.argv[1]
    if cmd == "macs":
        macs(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif cmd == "to-mac":
        macs(sys.argv[2], sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7]), src_mac=sys.argv[3])
    elif cmd == "flows":
        flows(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "hold":
        hold(sys.argv[2], int(sys.argv[3]), sys.argv[4])


if __name__ == "__main__":
    main()
