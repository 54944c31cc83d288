import Etcd

/// What etcd holds under `prefix`: the bytes of its keys and values, and how many keys.
/// For the figures of etcd's size per build (docs/logs.md).
public func etcdBytes(_ etcd: EtcdClient, under prefix: String) async throws -> (bytes: Int, keys: Int) {
    let kvs = try await etcd.range(prefix: prefix).kvs
    return (kvs.reduce(0) { $0 + $1.key.utf8.count + $1.value.count }, kvs.count)
}
