# Least-privilege ACL policy for ksr-publisher-consul (Consul 1.8), owner "ksr",
# environment "test". Adjust the node name (--consul-node, default: the owner), the
# environment service names (one per environment you route) and the KV prefix (ksr/<owner>/).
# The first router's entries live on node "ksr"; each further --router-address on
# "ksr-<address>" (the node_prefix below; drop it with a single router).
node "ksr" {
  policy = "write"
}
node_prefix "ksr-" {
  policy = "write"
}
service "test" {
  policy = "write"
}
service "vulcan" {
  policy = "write"
}
key_prefix "ksr/ksr/consul/" {
  policy = "write"
}
