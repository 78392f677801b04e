<?php
// The producer of the original work queue (RabbitMQ's send.php), on fanout:
// one job for the data_sync queue. Usage: php producer.php [host:port of the data source]
[$host, $port] = explode(':', $argv[1] ?? '127.0.0.1:2345');
$s = stream_socket_client("tcp://$host:$port") or exit(1);
fgets($s); // Welcome to Data Source Server
fwrite($s, "enqueue data_sync Hello World!\n");
echo " [x] Sent 'Hello World!': ", fgets($s); // OK enqueued data_sync#<id>
