import Etcd
import Foundation
import KilnCore
import Synchronization

/// What the agent's registration `/kiln/agents/{id}` says and under which lease: the
/// registration loop writes it when it (re)registers, the disk check when the disk's figures
/// changed meaningfully (`AgentDisk.differsMeaningfully`), each under the current lease.
/// Writes are one at a time, so an older figure never lands after a newer one.
final class AgentRegistration: Sendable {
    private struct State {
        var info: AgentInfo
        var lease: Int64?
        /// The disk as the key says it now.
        var published: AgentDisk?
    }
    private let state: Mutex<State>
    private let writes = KeyedLock()
    let key: String

    init(info: AgentInfo, key: String) {
        state = Mutex(State(info: info))
        self.key = key
    }

    var info: AgentInfo { state.withLock { $0.info } }

    /// Writes the registration under `lease` (a new one).
    func register(lease: Int64, etcd: EtcdClient) async throws {
        try await writes.withLock("put") {
            let info = state.withLock { $0.info }
            try await etcd.put(key, try KilnJSON.encode(info), lease: lease)
            state.withLock {
                $0.lease = lease
                $0.published = info.disk
            }
        }
    }

    /// The lease is gone: nothing is written until the next `register`.
    func leaseLost() { state.withLock { $0.lease = nil } }

    /// Takes the disk's new figures; writes them when they differ meaningfully from what the
    /// key says and the agent is registered. Returns whether it wrote. A failed write is left
    /// for the next figures (or the next registration, which writes the latest).
    @discardableResult
    func update(disk: AgentDisk, etcd: EtcdClient) async -> Bool {
        let due = state.withLock { s -> Bool in
            s.info.disk = disk
            return s.lease != nil && disk.differsMeaningfully(from: s.published)
        }
        guard due else { return false }
        return (try? await writes.withLock("put") { () -> Bool in
            let (info, lease) = state.withLock { ($0.info, $0.lease) }
            guard let lease, info.disk?.differsMeaningfully(from: state.withLock { $0.published }) ?? false else { return false }
            try await etcd.put(key, try KilnJSON.encode(info), lease: lease)
            state.withLock { $0.published = info.disk }
            return true
        }) ?? false
    }
}
