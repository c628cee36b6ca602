# What the anonymous token (or the DNS clients' agent token) needs for
# <name>-<namespace>.<environment>.service.consul to resolve under default-deny ACLs.
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
