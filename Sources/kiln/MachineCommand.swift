import ArgumentParser
import Etcd
import Foundation
import KilnCore
import RegistryAuth

struct MachineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "machine",
        abstract: "Give a machine (an agent, a deployer) credentials for the registry's token service.",
        discussion: """
        The registry trusts tokens from the scheduler's /auth/token only. A machine asks for \\
        them with NAME:TOKEN (HTTP Basic); the token lives in a file of mode 0600 on that \\
        machine, and etcd keeps only its SHA-256 and the machine's kind at /kiln/machines/NAME:
          agent     push and pull the repositories of the builds assigned to agent NAME now
                    (give it to `kiln agent --id NAME --registry-credentials FILE`)
          deployer  pull any repository (`kiln scheduler --registry-credentials FILE`)
        Running `add` again gives the machine a new token (the old one stops working).
        This talks to etcd directly, as etcd's root (no component's user may write \
        /kiln/machines/): run it where you run etcdctl, with --etcd-credentials FILE holding \
        root:PASSWORD (kiln up keeps it in <data-dir>/credentials/etcd-root).
        """,
        subcommands: [Add.self, Remove.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add", abstract: "Make a machine's token, write NAME:TOKEN to a file (mode 0600), register its hash.")

        @OptionGroup var etcd: EtcdOptions
        @Argument(help: "The machine's name: an agent's --id for an agent.") var name: String
        @Option(name: .long, help: "agent or deployer.") var kind: MachineCredential.Kind
        @Option(name: .long, help: ArgumentHelp("Where to write NAME:TOKEN (mode 0600); copy it to the machine.", valueName: "file")) var out: String

        func validate() throws {
            do { try MachineCredential.validateName(name) } catch { throw ValidationError("\(error)") }
        }

        func run() async throws {
            let logger = KilnLogging.bootstrap(etcd.logLevel ?? "warning")
            let client = try etcd.client(logger: logger)
            try await MachineCredentials.register(name: name, kind: kind, token: Secret.random(), file: out, etcd: client, keys: Keys(prefix: etcd.prefix))
            print("\(kind.rawValue) \(name): credentials in \(out) (mode 0600); its SHA-256 is at \(Keys(prefix: etcd.prefix).machine(name))")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove", abstract: "Take a machine's registry credentials away.")
        @OptionGroup var etcd: EtcdOptions
        @Argument(help: "The machine's name.") var name: String

        func run() async throws {
            let logger = KilnLogging.bootstrap(etcd.logLevel ?? "warning")
            let keys = Keys(prefix: etcd.prefix)
            _ = try await etcd.client(logger: logger).delete(keys.machine(name))
            print("\(name) can get no more registry tokens (tokens it has expire within 5 minutes)")
        }
    }
}

/// Writes a machine's credential file and registers the token's hash in etcd.
enum MachineCredentials {
    /// `file` gets `name:token` (mode 0600, atomically); `/kiln/machines/{name}` the token's
    /// SHA-256 and `kind`. The file is written first: a machine is never registered with a
    /// token nobody has.
    static func register(name: String, kind: MachineCredential.Kind, token: String, file: String, etcd: EtcdClient, keys: Keys) async throws {
        try MachineCredential.validateName(name)
        try CredentialFile.write("\(name):\(token)", to: file)
        let record = MachineCredential(name: name, kind: kind, tokenSHA256: MachineToken.sha256Hex(token))
        _ = try await etcd.put(keys.machine(name), try KilnJSON.encode(record))
    }
}
