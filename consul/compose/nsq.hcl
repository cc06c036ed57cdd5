# NSQ's own daemons in the compose topology (profile consul), as Consul service
# definitions: nsqd, nsqlookupd and nsqadmin do not register themselves. Mounted into the
# consul container at /consul/config (its -config-dir). Each has an HTTP check on its /ping.
#
# The services read these: consumers take nsqlookupd's HTTP port (its service port, or meta
# http_port), producers take nsqd's TCP port (meta tcp_port, else the service port).

services {
  id      = "nsqlookupd-1"
  name    = "nsqlookupd"
  address = "nsqlookupd"
  port    = 4161
  meta    = { http_port = "4161", tcp_port = "4160" }
  check {
    name     = "nsqlookupd /ping"
    http     = "http://nsqlookupd:4161/ping"
    interval = "5s"
    timeout  = "2s"
  }
}

services {
  id      = "nsqd-1"
  name    = "nsqd"
  address = "nsqd"
  port    = 4150
  meta    = { tcp_port = "4150", http_port = "4151" }
  check {
    name     = "nsqd /ping"
    http     = "http://nsqd:4151/ping"
    interval = "5s"
    timeout  = "2s"
  }
}

services {
  id      = "nsqadmin-1"
  name    = "nsqadmin"
  address = "nsqadmin"
  port    = 4171
  check {
    name     = "nsqadmin /ping"
    http     = "http://nsqadmin:4171/ping"
    interval = "5s"
    timeout  = "2s"
  }
}
