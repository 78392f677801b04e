#!/usr/bin/env python3
"""The consumer of the original work queue (RabbitMQ's receive.php), on fanout:
takes data_sync's jobs one at a time and acknowledges each once done.
Usage: consumer.py [host:port of the subscriber server] [jobs to take, default: forever]"""
import socket
import sys

host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:2346").rsplit(":", 1)
count = int(sys.argv[2]) if len(sys.argv) > 2 else 0
with socket.create_connection((host, int(port))) as s:
    f = s.makefile("rw", newline="\n")
    f.readline()  # Welcome to Subscriber Server
    f.write("consume data_sync 1\n")  # prefetch 1: one job at a time
    f.flush()
    print(" [*] Waiting for messages:", f.readline().strip())
    done = 0
    for line in f:
        if line.startswith("Job ["):  # Job [data_sync#1] try 1: Hello World!
            job, rest = line[len("Job ["):].split("] ", 1)
            print(" [x] Received", rest.split(": ", 1)[1].rstrip("\n"))
            f.write(f"ack {job}\n")
            f.flush()
        elif line.startswith("OK acked"):
            done += 1
            if done == count:
                break
