import ArgumentParser
import Etcd
import Foundation
import KilnCore
import LocalFarm

/// `kiln etcd-auth`: the farm's etcd users and least-privilege roles on a real etcd cluster.
struct EtcdAuthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "etcd-auth",
        abstract: "Set up etcd's users and least-privilege roles for a farm's processes.",
        discussion: """
        Each Kiln process talks to etcd as a user of its own whose role holds only the keys it \
        needs: the scheduler; each agent (its registration, its tasks, the build records and \
        logs); each lb-agent (its group's domains, its own report). `kiln up` does this by \
        itself; on a real cluster run `setup` once, and again whenever an agent or lb-agent \
        joins, or print the etcdctl commands with `commands`. See docs/etcd-auth.md.
        """,
        subcommands: [Setup.self, Commands.self])

    /// The components to make users for, shared by both subcommands.
    struct Components: ParsableArguments {
        @Option(help: ArgumentHelp("Agent ids, comma-separated (each agent runs with --id ID).", valueName: "id,id"))
        var agents: String = ""

        @Option(name: .customLong("lb-agents"), help: ArgumentHelp("lb-agents as GROUP/ID, comma-separated (each runs with --group GROUP --id ID).", valueName: "group/id,…"))
        var lbAgents: String = ""

        @Flag(name: .customLong("no-scheduler"), help: "Make no user for the scheduler.")
        var noScheduler = false

        @Option(help: ArgumentHelp("Prefix of every Kiln key in etcd (env KILN_PREFIX).", valueName: "prefix"))
        var prefix: String = env("KILN_PREFIX", "/kiln")

        @Option(name: .customLong("slb-root"), help: ArgumentHelp("Root of the lb keys in etcd (env KILN_SLB_ROOT).", valueName: "prefix"))
        var slbRoot: String = env("KILN_SLB_ROOT", "/slb")

        func parsed() throws -> [EtcdAccess] {
            var all: [EtcdAccess] = noScheduler ? [] : [.scheduler]
            do {
                for id in list(agents) {
                    try Validation.agentID(id)
                    all.append(.agent(id))
                }
                for item in list(lbAgents) {
                    let parts = item.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
                    guard parts.count == 2 else { throw ValidationError("--lb-agents takes GROUP/ID items, such as local/lb-1, not '\(item)'") }
                    let access = EtcdAccess.lbAgent(group: parts[0], id: parts[1])
                    try access.validate()
                    all.append(access)
                }
            } catch let error as KilnError {
                throw ValidationError(error.message)
            }
            guard !all.isEmpty else { throw ValidationError("name at least one component: --agents, --lb-agents, or leave out --no-scheduler") }
            return all
        }

        func validate() throws {
            _ = try parsed()
            guard prefix.hasPrefix("/"), slbRoot.hasPrefix("/") else { throw ValidationError("--prefix and --slb-root must start with '/'") }
        }

        private func list(_ text: String) -> [String] {
            text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
    }

    struct Setup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make the users and roles in etcd and write one credential file per user.",
            discussion: """
            Idempotent: a credential file already in --out is kept (its user is made or set to \
            its password); a missing one gets a random password. Roles are set to exactly their \
            grants. If etcd's root user does not exist yet it is made with the password in \
            --root-credentials (made if the file is missing), and authentication is turned on.

            Example:
              kiln etcd-auth setup --etcd https://etcd-1:2379 --etcd-ca ca.pem \\
                --root-credentials /etc/kiln/etcd-root --agents agent-1,agent-2 --lb-agents web/lb-1 \\
                --out /etc/kiln/credentials
            Then start each process with its file, e.g. `kiln agent --id agent-1 --etcd-credentials \
            /etc/kiln/credentials/etcd-agent.agent-1 …`.
            """)

        @Option(help: EtcdAccessOptions.etcdHelp)
        var etcd: String = env("KILN_ETCD", "http://127.0.0.1:2379")

        @OptionGroup var tls: EtcdAccessOptions

        @Option(name: .customLong("root-credentials"), help: ArgumentHelp("File with etcd's root user as root:password, mode 0600; made with a random password if missing.", valueName: "file"))
        var rootCredentials: String

        @Option(help: ArgumentHelp("Folder of the credential files (created 0700; each file 0600).", valueName: "dir"))
        var out: String

        @OptionGroup var components: Components

        func validate() throws {
            guard tls.credentials == nil else {
                throw ValidationError("setup works as etcd's root user: pass --root-credentials, not --etcd-credentials")
            }
            try tls.check(endpoint: etcd)
        }

        func run() async throws {
            let users = try await EtcdUsers.enable(
                endpoint: etcd, credentialsDir: URL(fileURLWithPath: out), rootCredentialFile: URL(fileURLWithPath: rootCredentials),
                keys: Keys(prefix: components.prefix), slb: SLBKeys(root: components.slbRoot), tls: tls.tls)
            say("etcd at \(etcd): authentication on, root user from \(rootCredentials)")
            for access in try components.parsed() {
                let file = try await users.ensure(access)
                say("  \(access.user) (\(access)): \(file.path)")
            }
        }
    }

    struct Commands: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the etcdctl commands that make the same roles and users.",
            discussion: """
            For operators who set up etcd with their own tools. PASSWORD stands for a password \
            of your choosing; put USER:PASSWORD in a file of mode 0600 for the process.

            Example: kiln etcd-auth commands --agents agent-1 --lb-agents web/lb-1
            """)

        @OptionGroup var components: Components

        func run() throws {
            let keys = Keys(prefix: components.prefix), slb = SLBKeys(root: components.slbRoot)
            say("# etcd's administrator (skip if it exists)")
            say("etcdctl user add root      # asks for root's password")
            say("etcdctl user grant-role root root")
            for access in try components.parsed() {
                say("\n# \(access)")
                say("etcdctl role add \(access.user)")
                for permission in EtcdUsers.permissions(access, keys: keys, slb: slb) {
                    say("etcdctl role grant-permission \(access.user) \(permission.etcdctlArguments)")
                }
                say("etcdctl user add \(access.user)      # asks for its password; give the process \(access.credentialFileName) holding \(access.user):PASSWORD")
                say("etcdctl user grant-role \(access.user) \(access.user)")
            }
            say("\netcdctl auth enable")
        }
    }
}
