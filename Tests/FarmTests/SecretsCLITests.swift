import Etcd
import FarmHarness
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// `kiln secret`, `kiln credential`, `kiln cell credential` and `kiln secrets` as a person
/// runs them, against a `kiln scheduler` process started with the farm's secrets key file.
@Suite("Secrets from the CLI (real processes)", .serialized)
struct SecretsCLITests {
    /// Runs `kiln ARGS` as the admin (KILN_TOKEN, KILN_API), `input` on its standard input.
    static func kiln(_ farm: ProcessFarm, _ arguments: [String], input: String = "") async throws -> (status: Int32, output: String) {
        let api = try #require(farm.schedulers.values.first).api
        let environment = ProcessInfo.processInfo.environment.merging(["KILN_TOKEN": farm.adminToken, "KILN_API": api]) { $1 }
        let (kiln, data) = (farm.kiln, Data(input.utf8))
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result {
                    let (status, output) = try Spawn.run(kiln, arguments, environment: environment, input: data)
                    return (status, String(decoding: output, as: UTF8.self))
                })
            }
        }
    }

    /// A file in `dir` with `text`, at `mode`.
    static func file(_ dir: TempDir, _ name: String, _ text: String, mode: Int = 0o600) throws -> String {
        let path = dir.path(name).path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        return path
    }

    /// The id of the key each sealed value in etcd is under.
    static func keyIDs(_ farm: ProcessFarm) async throws -> [String] {
        try await farm.etcd.range(prefix: farm.keys.secrets).kvs.map { kv in
            let object = try JSONSerialization.jsonObject(with: Data(kv.value)) as? [String: Any]
            return try #require((object?["sealed"] as? [String: Any])?["kid"] as? String, "\(kv.key)")
        }
    }

    @Test("values go in from standard input or a 0600 file, never an option, and come out as names only")
    func setListRemove() async throws {
        let farm = try await ProcessFarm("secrets-cli")
        try await farm.startScheduler("sched-1", leaderTTL: 5)
        let project = try #require(try await farm.addProjects(1).first)
        let dir = try TempDir("secrets-cli-files")
        let values = ["npm-token-value-1", "<settings><password>maven-pw-1</password></settings>", "glpat-cli-token-1",
                      "registry-cli-password", "kube-cli-token-value", "b3BlbnNzaC1rZXktdjEAAAAAcli-deploy-key"]

        var r = try await Self.kiln(farm, ["secret", "set", "NPM_TOKEN", "--project", project], input: values[0] + "\n")
        #expect(r.status == 0 && r.output.contains("secret NPM_TOKEN of project \(project) set"), "\(r.output)")
        r = try await Self.kiln(farm, ["secret", "set", "NPM_TOKEN", "--project", project, "--value", "x"])
        #expect(r.status != 0 && r.output.contains("Unknown option '--value'"), "\(r.output)")
        r = try await Self.kiln(farm, ["secret", "set", "EMPTY", "--project", project], input: "\n")
        #expect(r.status != 0 && r.output.contains("is empty"), "\(r.output)")
        let open = try Self.file(dir, "readable", values[1], mode: 0o644)
        r = try await Self.kiln(farm, ["secret", "set", "SETTINGS_XML", "--project", project, "--as-file", "--from-file", open])
        #expect(r.status != 0 && r.output.contains("chmod 600"), "\(r.output)")
        let settings = try Self.file(dir, "settings.xml", values[1])
        r = try await Self.kiln(farm, ["secret", "set", "SETTINGS_XML", "--project", project, "--as-file", "--protected-only", "--from-file", settings])
        #expect(r.status == 0 && r.output.contains("protected refs only") && r.output.contains("/run/secrets/SETTINGS_XML"), "\(r.output)")
        r = try await Self.kiln(farm, ["secret", "set", "NPM_TOKEN", "--group", "nobody-here"], input: "long enough value")
        #expect(r.status != 0 && r.output.contains("group 'nobody-here' does not exist"), "\(r.output)")

        r = try await Self.kiln(farm, ["credential", "set", "git", "--project", project, "--username", "deploy"], input: values[2])
        #expect(r.status == 0 && r.output.contains("(token)"), "\(r.output)")
        let key = try Self.file(dir, "deploy_key", "-----BEGIN OPENSSH PRIVATE KEY-----\n\(values[5])\n-----END OPENSSH PRIVATE KEY-----\n")
        let hosts = try Self.file(dir, "known_hosts", "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n", mode: 0o644)
        r = try await Self.kiln(farm, ["credential", "set", "git", "--project", project, "--ssh-key-file", key])
        #expect(r.status != 0 && r.output.contains("--known-hosts-file"), "\(r.output)")
        r = try await Self.kiln(farm, ["credential", "set", "git", "--project", project, "--ssh-key-file", key, "--known-hosts-file", hosts])
        #expect(r.status == 0 && r.output.contains("(sshKey)"), "\(r.output)")
        let password = try Self.file(dir, "registry-password", values[3])
        r = try await Self.kiln(farm, ["credential", "set", "registry", "registry.example.com:5000", "--project", project, "--username", "ci", "--password-file", password])
        #expect(r.status == 0, "\(r.output)")
        #expect(try await Self.kiln(farm, ["cell", "add", "k1", "--backend", "kubernetes", "--endpoint", "https://127.0.0.1:6443"]).status == 0)
        let ca = try Self.file(dir, "ca.crt", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", mode: 0o644)
        r = try await Self.kiln(farm, ["cell", "credential", "set", "k1", "--ca-file", ca], input: values[4])
        #expect(r.status == 0 && r.output.contains("credential of cell k1 set (token)"), "\(r.output)")

        let listed = try await Self.kiln(farm, ["secret", "list", "--project", project])
        #expect(listed.status == 0, "\(listed.output)")
        for name in ["NPM_TOKEN", "SETTINGS_XML", "protected refs only", "git", "sshKey", "registry.example.com:5000", "user ci", "by admin"] {
            #expect(listed.output.contains(name), "\(name) in \(listed.output)")
        }
        for value in values { #expect(!listed.output.contains(value)) }

        r = try await Self.kiln(farm, ["secret", "rm", "NPM_TOKEN", "--project", project])
        #expect(r.status == 0, "\(r.output)")
        r = try await Self.kiln(farm, ["secret", "rm", "NPM_TOKEN", "--project", project])
        #expect(r.status != 0 && r.output.contains("has no secret NPM_TOKEN"), "\(r.output)")
        #expect(try await Self.kiln(farm, ["credential", "rm", "registry", "registry.example.com:5000", "--project", project]).status == 0)
        #expect(try await Self.kiln(farm, ["cell", "credential", "rm", "k1"]).status == 0)
        let left = try await Self.kiln(farm, ["secret", "list", "--project", project, "--json"])
        #expect(!left.output.contains("NPM_TOKEN") && !left.output.contains("registry.example.com") && left.output.contains("SETTINGS_XML"), "\(left.output)")

        // Nothing of it in etcd in clear.
        for kv in try await farm.etcd.range(prefix: "/").kvs {
            for value in values { #expect(!kv.string.contains(value) && !kv.string.contains(Data(value.utf8).base64EncodedString()), "\(kv.key)") }
        }
        withExtendedLifetime(dir) {}
    }

    @Test("kiln secrets rotate seals every value under a new key while the scheduler runs, and the file keeps only that key")
    func rotate() async throws {
        let farm = try await ProcessFarm("secrets-rotate")
        try await farm.startScheduler("sched-1", leaderTTL: 5)
        let project = try #require(try await farm.addProjects(1).first)
        for i in 0..<5 {
            #expect(try await Self.kiln(farm, ["secret", "set", "TOKEN_\(i)", "--project", project], input: "value-number-\(i)").status == 0)
        }
        let dir = try TempDir("secrets-rotate-files")
        var r = try await Self.kiln(farm, ["secrets", "key", "new", "--file", farm.secretsKeyFile])
        #expect(r.status != 0 && r.output.contains("exists already"), "\(r.output)")
        let fresh = dir.path("fresh-key").path
        r = try await Self.kiln(farm, ["secrets", "key", "new", "--file", fresh])
        #expect(r.status == 0, "\(r.output)")
        #expect(try FileManager.default.attributesOfItem(atPath: fresh)[.posixPermissions] as? Int == 0o600)

        let before = Set(try await Self.keyIDs(farm))
        #expect(before.count == 1, "the check value and the 5 secrets under the first key: \(before)")
        r = try await Self.kiln(farm, ["secrets", "rotate", "--secrets-key-file", farm.secretsKeyFile])
        #expect(r.status == 0 && r.output.contains("6 from key \(before.first!)") && r.output.contains("dropped keys \(before.first!)"), "\(r.output)")
        let lines = try CredentialFile.read(farm.secretsKeyFile).split(separator: "\n")
        let after = Set(try await Self.keyIDs(farm))
        #expect(lines.count == 1 && after.count == 1 && after != before, "\(after)")

        // A file the scheduler does not read: nothing is dropped from it, and the command says why.
        r = try await Self.kiln(farm, ["secrets", "rotate", "--secrets-key-file", fresh])
        #expect(r.status != 0 && r.output.contains("not the file it reads"), "\(r.output)")
        #expect(try CredentialFile.read(fresh).split(separator: "\n").count == 2)

        // Restarted, the scheduler opens what the rotation sealed (its start check), and a
        // second rotation opens every value again.
        farm.stopProcesses()
        try await farm.startScheduler("sched-2", leaderTTL: 5)
        r = try await Self.kiln(farm, ["secrets", "rotate", "--secrets-key-file", farm.secretsKeyFile])
        #expect(r.status == 0 && r.output.contains("6 from key \(after.first!)"), "\(r.output)")
        r = try await Self.kiln(farm, ["secrets", "reseal"])
        #expect(r.status == 0 && r.output.contains("none; 6 already under it"), "\(r.output)")
        withExtendedLifetime(dir) {}
    }
}
