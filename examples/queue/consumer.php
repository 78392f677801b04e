<?php
// The consumer of the original work queue (RabbitMQ's receive.php), on fanout:
// takes data_sync's jobs one at a time and acknowledges each once done.
// Usage: php consumer.php [host:port of the subscriber server] [jobs to take, default: forever]
[$host, $port] = explode(':', $argv[1] ?? '127.0.0.1:2346');
$count = (int) ($argv[2] ?? 0);
$s = stream_socket_client("tcp://$host:$port") or exit(1);
fgets($s); // Welcome to Subscriber Server
fwrite($s, "consume data_sync 1\n"); // prefetch 1: one job at a time
echo " [*] Waiting for messages: ", fgets($s);
$done = 0;
while (($line = fgets($s)) !== false) {
    if (preg_match('/^Job \[(\S+)\] try \d+: (.*)$/', rtrim($line, "\n"), $m)) {
        echo " [x] Received ", $m[2], "\n";
        fwrite($s, "ack {$m[1]}\n");
    } elseif (str_starts_with($line, 'OK acked') && ++$done === $count) {
        break;
    }
}
