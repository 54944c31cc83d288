import ArgumentParser
import Foundation
import KilnClient
import KilnCore
import Sealing

/// `kiln secrets key new|add`, `kiln secrets rotate`, `kiln secrets reseal`: the key file
/// that seals every secret in etcd, and its rotation (docs/secrets.md).
struct SecretsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secrets",
        abstract: "The secrets key file of the schedulers, and its rotation.",
        discussion: """
        Every secret Kiln keeps is sealed in etcd with AES-256-GCM under the first key of the \
        schedulers' --secrets-key-file (one `v1 <base64>` line per key; the first seals, every \
        one opens). Agents never hold it. Keep it at mode 0600 and back it up: without it the \
        secrets cannot be opened and must be set again.

        Rotation, one scheduler (or a key file every scheduler reads):
          kiln secrets rotate --secrets-key-file /etc/kiln/secrets-key
        adds a new first key, has the scheduler seal every value again under it (the farm \
        keeps running; each scheduler notices the file's change by itself), then drops the \
        keys no value uses any more.

        Rotation, several hosts (each scheduler has its own copy of the file):
          kiln secrets key add --file secrets-key            # a new first key
          (copy secrets-key to every scheduler host, mode 0600)
          kiln secrets reseal --prune --secrets-key-file secrets-key
          (copy the pruned secrets-key to every scheduler host again)
        Copy before the reseal: a scheduler whose file lacks the new key cannot open what is \
        sealed under it.
        """,
        subcommands: [Key.self, Rotate.self, Reseal.self])

    struct Key: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a key file, or add a new sealing key to one.", subcommands: [New.self, Add.self])

        struct New: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Make a new secrets key file (mode 0600) with one key.",
                discussion: "Example: kiln secrets key new --file /etc/kiln/secrets-key   (then kiln scheduler --secrets-key-file /etc/kiln/secrets-key)")
            @Option(name: .long, help: ArgumentHelp("Where to write it; an existing file is refused.", valueName: "file")) var file: String

            func run() throws {
                guard !FileManager.default.fileExists(atPath: file) else {
                    throw ValidationError("\(file) exists already: it may be the key of a farm's secrets, and replacing it would lose them; to change the key use `kiln secrets rotate --secrets-key-file \(file)`")
                }
                let id = try SecretsKeyring.create(at: file)
                say("secrets key file \(file) made (mode 0600), key \(id); start every scheduler with --secrets-key-file \(file), and keep a backup")
            }
        }

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Put a new key first in a key file: it seals from now on, the others still open.",
                discussion: "For a rotation across several hosts (kiln secrets --help); on one host `kiln secrets rotate` does it all.")
            @Option(name: .long, help: ArgumentHelp("The key file.", valueName: "file")) var file: String

            func run() throws {
                let id = try SecretsKeyring.addKey(at: file)
                say("key \(id) added first to \(file); copy the file to every scheduler, then run `kiln secrets reseal --prune --secrets-key-file \(file)`")
            }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Seal every secret under a new key, while the farm runs (admins).",
            discussion: """
            Adds a new first key to the file, asks the scheduler (--api) to seal every value \
            again under it, then drops the keys no value is sealed under any more. The file \
            must be the one the scheduler reads (the command checks that the scheduler seals \
            under the new key). If some value could not be sealed again, no key is dropped and \
            the command says which values and fails.

            Example: kiln secrets rotate --secrets-key-file kiln-data/credentials/secrets-key
            """)
        @OptionGroup var api: APIOptions
        @Option(name: .long, help: ArgumentHelp("The schedulers' key file (env KILN_SECRETS_KEY_FILE).", valueName: "file"))
        var secretsKeyFile: String = env("KILN_SECRETS_KEY_FILE", "")

        func validate() throws {
            guard !secretsKeyFile.isEmpty else { throw ValidationError("give --secrets-key-file FILE, the file the schedulers read") }
        }

        func run() async throws {
            let new = try SecretsKeyring.addKey(at: secretsKeyFile)
            say("key \(new) added first to \(secretsKeyFile); sealing every secret again under it")
            let report: SecretsResealReport
            do {
                report = try await api.client().post("/api/v1/admin/secrets/reseal", body: Optional<String>.none, as: SecretsResealReport.self)
            } catch {
                throw CLIFailure(description: "key \(new) is in \(secretsKeyFile) (new secrets are sealed under it), but the reseal failed: \(error). When the scheduler answers, run `kiln secrets reseal --prune --secrets-key-file \(secretsKeyFile)`")
            }
            try Reseal.finish(report, keyFile: secretsKeyFile, json: api.json)
        }
    }

    struct Reseal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Seal every secret again under the first key of the schedulers' key file (admins).",
            discussion: """
            After a new key was put first in the file (`kiln secrets key add`) and the file \
            copied to every scheduler. With --prune and --secrets-key-file, the keys no value \
            uses any more are then dropped from that file (copy it to the schedulers again).
            """)
        @OptionGroup var api: APIOptions
        @Flag(name: .long, help: "Then drop from --secrets-key-file the keys no value is sealed under any more.") var prune = false
        @Option(name: .long, help: ArgumentHelp("The key file to prune (env KILN_SECRETS_KEY_FILE).", valueName: "file"))
        var secretsKeyFile: String = env("KILN_SECRETS_KEY_FILE", "")

        func validate() throws {
            if prune, secretsKeyFile.isEmpty { throw ValidationError("--prune needs --secrets-key-file FILE, the file to drop keys from") }
        }

        func run() async throws {
            let report = try await api.client().post("/api/v1/admin/secrets/reseal", body: Optional<String>.none, as: SecretsResealReport.self)
            try Self.finish(report, keyFile: prune ? secretsKeyFile : nil, json: api.json)
        }

        /// Prints what the scheduler did; drops the unused keys from `keyFile` when it is the
        /// scheduler's and nothing failed; fails when something did.
        static func finish(_ report: SecretsResealReport, keyFile: String?, json: Bool) throws {
            if json { Show.printJSON(report) } else {
                let moved = report.resealed.sorted { $0.key < $1.key }.map { "\($0.value) from key \($0.key)" }
                say("sealed again under key \(report.key): \(moved.isEmpty ? "none" : moved.joined(separator: ", ")); \(report.current) already under it")
                for failure in report.failed { say("  not sealed again: \(failure)") }
            }
            guard report.failed.isEmpty else {
                throw CLIFailure(description: "\(report.failed.count) values could not be sealed again; no key was dropped. Restore the keys they are under (\(report.keysInUse.dropFirst().joined(separator: ", "))) to the schedulers' key file, or set those secrets again, then reseal")
            }
            guard let keyFile else { return }
            let file = try SecretsKeyring.parse(try CredentialFile.read(keyFile), path: keyFile)
            guard file.first?.id == report.key else {
                throw CLIFailure(description: "the scheduler seals under key \(report.key), but the first key of \(keyFile) is \(file.first?.id ?? "none"): this is not the file it reads (or it was not copied to it yet); no key was dropped")
            }
            let dropped = file.map(\.id).filter { !report.keysInUse.contains($0) }
            try SecretsKeyring.keepOnly(Swift.Set(report.keysInUse), at: keyFile)
            say(dropped.isEmpty ? "\(keyFile) keeps its keys" : "dropped keys \(dropped.joined(separator: ", ")) from \(keyFile); it holds \(report.keysInUse.joined(separator: ", "))")
        }
    }
}
