#!/usr/bin/env python3
"""The producer of the original work queue (RabbitMQ's send.php), on fanout:
one job for the data_sync queue. Usage: producer.py [host:port of the data source]"""
import socket
import sys

host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:2345").rsplit(":", 1)
with socket.create_connection((host, int(port))) as s:
    f = s.makefile("rw", newline="\n")
    f.readline()  # Welcome to Data Source Server
    f.write("enqueue data_sync Hello World!\n")
    f.flush()
    print(" [x] Sent 'Hello World!':", f.readline().strip())  # OK enqueued data_sync#<id>
