import Etcd
import Foundation
import KilnCore
import LocalFarm
import RegistryAuth

/// The registry credentials `kiln up` keeps in `<data-dir>/credentials/` (each file mode
/// 0600, kept from one start to the next): the token signing key and its certificate (the
/// registry's rootcertbundle), the admin token (user `admin`'s password), and one
/// `name:token` file per machine: `registry-agent-N` for each agent, `registry-deployer` for
/// the scheduler's deploy backends.
struct UpRegistryCredentials {
    let directory: URL
    let signingKey: String
    let certificate: String
    let adminToken: String
    /// The token the registry reports pushes and deletes to the scheduler with.
    let eventsToken: String
    let deployer: String
    let agents: [(id: String, file: String)]

    /// Makes what is missing; reads what is there.
    init(dataDir: URL, agents count: Int) throws {
        let directory = dataDir.appendingPathComponent("credentials")
        self.directory = directory
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        signingKey = path("registry-signing-key.pem")
        certificate = path("registry-signing-cert.pem")
        adminToken = path("admin-token")
        eventsToken = path("registry-events-token")
        deployer = path("registry-deployer")
        agents = (1...count).map { ("agent-\($0)", path("registry-agent-\($0)")) }

        let key = try TokenSigningKey(pem: try CredentialFile.readOrCreate(signingKey) { TokenSigningKey.generate().privateKeyPEM })
        // A new certificate each start is harmless (same key, same kid) and outlives any clock jump.
        try CredentialFile.write(try key.certificatePEM(), to: certificate)
        // The first admin's API token: the scheduler makes user admin with it.
        _ = try CredentialFile.readOrCreate(adminToken) { "kiln_" + Secret.random() }
        _ = try CredentialFile.readOrCreate(eventsToken)
        for (name, file) in [("deployer", deployer)] + agents.map({ ($0.id, $0.file) }) {
            _ = try CredentialFile.readOrCreate(file) { "\(name):\(Secret.random())" }
        }
    }

    /// The registry's token authentication, its realm the scheduler's `/auth/token`.
    func registryAuth(apiPort: Int) throws -> RegistryServer.TokenAuth {
        RegistryServer.TokenAuth(realm: "http://127.0.0.1:\(apiPort)/auth/token", rootCertBundle: URL(fileURLWithPath: certificate),
                                 events: ("http://127.0.0.1:\(apiPort)/hooks/registry", try CredentialFile.read(eventsToken)))
    }

    /// Registers every machine's token hash in etcd (again on every start: idempotent).
    func registerMachines(etcd: EtcdClient, keys: Keys) async throws {
        for (kind, file) in [(MachineCredential.Kind.deployer, deployer)] + agents.map({ (MachineCredential.Kind.agent, $0.file) }) {
            let credentials = try UserPassword.read(file)
            try await MachineCredentials.register(name: credentials.user, kind: kind, token: credentials.password, file: file, etcd: etcd, keys: keys)
        }
    }

    /// `kiln scheduler`'s token service and deploy-credential options.
    var schedulerArguments: [String] {
        ["--registry-signing-key", signingKey, "--admin-token-file", adminToken, "--registry-credentials", deployer,
         "--registry-events-token-file", eventsToken]
    }

    func agentArguments(_ id: String) -> [String] {
        agents.first { $0.id == id }.map { ["--registry-credentials", $0.file] } ?? []
    }

    /// What a person types to log in to the registry as admin.
    func loginCommand(registry: String) -> String {
        "podman login --tls-verify=false -u admin --password-stdin \(registry) < \(adminToken)"
    }
}
