# Least-privilege ACL policy for ksr-publisher-consul (Consul 1.8), owner "ksr",
# environment "test". Adjust the node name (--consul-node, default: the owner), the
# environment service names (one per environment you route) and the KV prefix (ksr/<owner>/).
node "ksr" {
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
