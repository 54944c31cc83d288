import Foundation
import KilnCore
import RegistryAuth

extension SchedulerStore {
    /// The machine whose name and token these are (`/kiln/machines/{name}`: the token's
    /// SHA-256, compared in constant time), or nil for wrong ones. The registry's token
    /// service and the agents' secrets endpoint both check machines with it.
    func machine(_ credentials: UserPassword) async throws -> MachineCredential? {
        guard (try? MachineCredential.validateName(credentials.user)) != nil,
              let kv = try await etcd.get(keys.machine(credentials.user)),
              let machine = try? KilnJSON.decode(MachineCredential.self, from: kv.value),
              Secret.equal(MachineToken.sha256Hex(credentials.password), machine.tokenSHA256) else { return nil }
        return machine
    }
}
