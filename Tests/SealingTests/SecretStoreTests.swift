import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Testing
@testable import Sealing

/// The sealed store against a real etcd: what is written, what a build gets, and what no key
/// file but the farm's opens.
@Suite("Secret store", .serialized)
struct SecretStoreTests {
    /// A store over a fresh etcd with a new key file; `body` gets the store and the file's path.
    func withStore(_ body: @escaping @Sendable (SecretStore, String) async throws -> Void) async throws {
        try await withEtcd { _, etcd in
            let temp = try TempDir("secrets")
            let path = temp.path("secrets-key").path
            try SecretsKeyring.create(at: path)
            try await body(try SecretStore(etcd: etcd, keyFile: path), path)
            withExtendedLifetime(temp) {}
        }
    }

    static let shop = Project(name: "shop", repository: "https://git.example.com/team/shop.git", buildImage: "a:1", buildCommand: "make",
                              protectedRefs: ["release/*"])
    static var inGroup: Project {
        var p = shop
        p.group = "team"
        return p
    }

    @Test func theProjectsValuesWinOverTheGroupsAndProtectedOnesAreWithheldFromOtherRefs() async throws {
        try await withStore { store, _ in
            try await store.setSecret("NPM_TOKEN", SecretRequest(value: "group-npm-token"), scope: .group("team"), by: "lead")
            try await store.setSecret("MAVEN_PASSWORD", SecretRequest(value: "group-maven-pass"), scope: .group("team"))
            try await store.setSecret("DEPLOY_KEY", SecretRequest(value: "group-deploy-key", protectedOnly: true), scope: .group("team"))
            try await store.setSecret("NPM_TOKEN", SecretRequest(value: "project-npm-token", file: true), scope: .project("shop"), by: "olga")
            try await store.setSecret("SIGNING_KEY", SecretRequest(value: "project-signing", protectedOnly: true), scope: .project("shop"))
            // The project's own setting wins even when it is the one withheld.
            try await store.setSecret("MAVEN_PASSWORD", SecretRequest(value: "project-maven-pass", protectedOnly: true), scope: .project("shop"))
            try await store.setRegistryLogin(RegistryCredentialRequest(username: "grp", password: "group-registry-pw"), host: "registry.example.com", scope: .group("team"))
            try await store.setRegistryLogin(RegistryCredentialRequest(username: "prj", password: "project-registry-pw"), host: "registry.example.com", scope: .project("shop"))
            try await store.setRegistryLogin(RegistryCredentialRequest(username: "base", password: "base-images-pw"), host: "127.0.0.1:5001", scope: .group("team"))
            try await store.setGitCredential(.token(username: "deploy", token: "glpat-abcdefgh"), project: "shop")

            let feature = try await store.buildSecrets(project: Self.inGroup, ref: "feature/x")
            #expect(feature.env.map(\.name) == ["NPM_TOKEN"])
            #expect(feature.env.first == BuildSecret(name: "NPM_TOKEN", value: "project-npm-token", file: true))
            #expect(feature.withheld == ["DEPLOY_KEY", "MAVEN_PASSWORD", "SIGNING_KEY"])
            #expect(!feature.maskedValues.contains { $0.contains("signing") || $0.contains("maven") || $0.contains("deploy-key") })
            #expect(feature.login(for: "REGISTRY.example.com")?.password == "project-registry-pw")
            #expect(feature.login(for: "127.0.0.1:5001")?.username == "base")
            #expect(feature.git == .token(username: "deploy", token: "glpat-abcdefgh"))

            for ref in ["main", "refs/heads/main", "release/2.0"] {
                let protected = try await store.buildSecrets(project: Self.inGroup, ref: ref)
                #expect(protected.withheld.isEmpty, "\(ref)")
                #expect(protected.env.map { "\($0.name)=\($0.value)" } == [
                    "DEPLOY_KEY=group-deploy-key", "MAVEN_PASSWORD=project-maven-pass", "NPM_TOKEN=project-npm-token", "SIGNING_KEY=project-signing",
                ], "\(ref)")
                #expect(protected.env.first { $0.name == "SIGNING_KEY" }?.protectedOnly == true)
            }
            // Out of the group, the group's are not inherited.
            let alone = try await store.buildSecrets(project: Self.shop, ref: "main")
            #expect(alone.env.map(\.name) == ["MAVEN_PASSWORD", "NPM_TOKEN", "SIGNING_KEY"] && alone.registries.map(\.username) == ["prj"])

            // The listing: names and metadata, never a value; the group's under scope "group".
            let listed = try await store.list(.project("shop"), group: "team")
            let text = try KilnJSON.encode(listed)
            for value in ["group-npm-token", "project-npm-token", "project-signing", "group-registry-pw", "glpat-abcdefgh"] {
                #expect(!text.contains(value))
            }
            #expect(listed.map { "\($0.scope) \($0.kind) \($0.name)" } == [
                "group env DEPLOY_KEY", "project env MAVEN_PASSWORD", "project env NPM_TOKEN", "project env SIGNING_KEY",
                "project git git", "group registry 127.0.0.1:5001", "project registry registry.example.com",
            ])
            #expect(listed.first { $0.name == "NPM_TOKEN" }?.updatedBy == "olga" && listed.first { $0.name == "NPM_TOKEN" }?.file == true)
            #expect(listed.first { $0.kind == "git" }?.detail == "token" && listed.first { $0.name == "registry.example.com" }?.detail == "prj")

            // Removed: gone from what a build gets; the group's comes back where it was replaced.
            #expect(try await store.deleteSecret("NPM_TOKEN", scope: .project("shop")))
            #expect(try await !store.deleteSecret("NPM_TOKEN", scope: .project("shop")))
            #expect(try await store.deleteGitCredential(project: "shop"))
            let after = try await store.buildSecrets(project: Self.inGroup, ref: "feature/x")
            #expect(after.env == [BuildSecret(name: "NPM_TOKEN", value: "group-npm-token")] && after.git == nil)
        }
    }

    @Test func badNamesAndShortValuesAreRefusedBeforeAnythingIsWritten() async throws {
        try await withStore { store, _ in
            await #expect(throws: KilnError.self) { try await store.setSecret("X", SecretRequest(value: "short"), scope: .project("shop")) }
            await #expect(throws: KilnError.self) { try await store.setSecret("1X", SecretRequest(value: "long enough value"), scope: .project("shop")) }
            await #expect(throws: KilnError.self) { try await store.setSecret("PATH", SecretRequest(value: "long enough value"), scope: .project("shop")) }
            await #expect(throws: KilnError.self) { try await store.setSecret("OK", SecretRequest(value: "long enough value"), scope: .project("../x")) }
            await #expect(throws: KilnError.self) {
                try await store.setRegistryLogin(RegistryCredentialRequest(username: "u", password: "x"), host: "r.example.com", scope: .group("team"))
            }
            await #expect(throws: KilnError.self) {
                try await store.setCellCredential(CellCredential(token: "a-long-enough-token", certificateAuthority: "not a certificate"), cell: "k1")
            }
            let written = try await store.etcd.range(prefix: store.keys.secrets).kvs
            #expect(written.isEmpty)
        }
    }

    @Test func aSealedValueMovedToAnotherKeyDoesNotOpen() async throws {
        try await withStore { store, _ in
            try await store.setSecret("TOKEN", SecretRequest(value: "only-for-shop"), scope: .project("shop"))
            let sealed = try #require(try await store.etcd.get(store.keys.secret(.project("shop"), env: "TOKEN")))
            // Someone with write access to etcd copies it into another project's secrets.
            try await store.etcd.put(store.keys.secret(.project("other"), env: "TOKEN"), sealed.string)
            let other = Project(name: "other", repository: "https://git.example.com/o.git", buildImage: "a:1", buildCommand: "make")
            await #expect { try await store.buildSecrets(project: other, ref: "main") } throws: {
                "\($0)".contains("does not open") && !"\($0)".contains("only-for-shop")
            }
        }
    }

    @Test func clearingTheProtectedOnlyFlagInEtcdMakesTheValueUnopenable() async throws {
        try await withStore { store, _ in
            try await store.setSecret("SIGNING", SecretRequest(value: "release-signing-key", protectedOnly: true), scope: .project("shop"))
            let key = store.keys.secret(.project("shop"), env: "SIGNING")
            var stored = try KilnJSON.decode(StoredSecret.self, from: try #require(try await store.etcd.get(key)).string)
            // Someone who can write etcd but has no key turns it into a secret every branch gets.
            stored.protectedOnly = nil
            try await store.etcd.put(key, try KilnJSON.encode(stored))
            let shop = Project(name: "shop", repository: "https://git.example.com/s.git", buildImage: "a:1", buildCommand: "make")
            await #expect { try await store.buildSecrets(project: shop, ref: "feature/x") } throws: {
                "\($0)".contains("does not open") && !"\($0)".contains("release-signing-key")
            }
        }
    }

    @Test func thePipelineLooksSecretsUpByNameWithTheSameRules() async throws {
        try await withStore { store, _ in
            try await store.setSecret("HOOK_URL", SecretRequest(value: "https://hooks.example.com/abc"), scope: .group("team"))
            try await store.setSecret("DB_PASSWORD", SecretRequest(value: "db-password-1", protectedOnly: true), scope: .project("shop"))
            #expect(try await store.secret("HOOK_URL", of: Self.inGroup, ref: "feature/x") == .value("https://hooks.example.com/abc"))
            #expect(try await store.secret("HOOK_URL", of: Self.shop, ref: "main") == .missing)
            #expect(try await store.secret("DB_PASSWORD", of: Self.shop, ref: "feature/x") == .withheld)
            #expect(try await store.secret("DB_PASSWORD", of: Self.shop, ref: "main") == .value("db-password-1"))
            #expect(try await store.cellCredential("k1") == nil)
            let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
            try await store.setCellCredential(CellCredential(token: "kube-token-123456", certificateAuthority: ca), cell: "k1", by: "admin")
            #expect(try await store.cellCredential("k1") == CellCredential(token: "kube-token-123456", certificateAuthority: ca))
            #expect(try await store.deleteCellCredential("k1"))
            #expect(try await store.cellCredential("k1") == nil)
        }
    }

    @Test func theFirstStartWritesTheCheckAndAnotherFarmsKeyIsRefused() async throws {
        try await withStore { store, path in
            let first = try await store.startCheck()
            #expect(first.wroteCheck && first.values == 1)
            let again = try await store.startCheck()
            #expect(!again.wroteCheck && again.byKey == [store.keyring.primaryID: 1])

            // Another farm's key file: refused, although no secret exists yet but the check.
            let temp = try TempDir("other-key")
            let otherPath = temp.path("secrets-key").path
            let otherID = try SecretsKeyring.create(at: otherPath)
            let stranger = try SecretStore(etcd: store.etcd, keyFile: otherPath)
            await #expect { try await stranger.startCheck() } throws: { error in
                let message = "\(error)"
                return message.contains(store.keyring.primaryID) && message.contains(otherID) && message.contains("same key file")
            }

            // A rotation whose old key left the file before every value was sealed again.
            try await store.setSecret("OLD_ONE", SecretRequest(value: "sealed-under-the-first-key"), scope: .project("shop"))
            let old = store.keyring.primaryID
            let added = try SecretsKeyring.addKey(at: path)
            #expect(store.keyring.primaryID == added)
            try SecretsKeyring.keepOnly([], at: path)
            await #expect { try await store.startCheck() } throws: { "\($0)".contains("2 under key \(old)") }
            withExtendedLifetime(temp) {}
        }
    }

    @Test func aWebhookTokenInAProjectRecordIsSealedAndStrippedAtStart() async throws {
        try await withStore { store, _ in
            var legacy = Self.shop
            legacy.webhookSecret = "gitlab-hook-token"
            try await store.etcd.put(store.keys.project("shop"), try KilnJSON.encode(legacy))
            try await store.etcd.put(store.keys.project("plain"), try KilnJSON.encode(Project(name: "plain", repository: "https://g.example.com/p.git", buildImage: "a:1", buildCommand: "make")))
            let report = try await store.startCheck()
            #expect(report.sealedWebhookSecrets == ["shop"])
            let record = try #require(try await store.etcd.get(store.keys.project("shop")))
            #expect(!record.string.contains("gitlab-hook-token") && !record.string.contains("webhookSecret"))
            #expect(try KilnJSON.decode(Project.self, from: record.value).repository == Self.shop.repository)
            #expect(try await store.webhookSecret(project: "shop") == "gitlab-hook-token")
            #expect(try await store.webhookSecret(project: "plain") == nil)
            #expect(try await store.startCheck().sealedWebhookSecrets.isEmpty)
        }
    }

    @Test func aPasswordInARepositoryURLBecomesTheSealedGitCredentialAtStart() async throws {
        try await withStore { store, _ in
            func put(_ name: String, _ url: String) async throws {
                try await store.etcd.put(store.keys.project(name), try KilnJSON.encode(Project(name: name, repository: url, buildImage: "a:1", buildCommand: "make")))
            }
            try await put("shop", "https://deploy%2Bbot:glpat-s3cr%40t@git.example.com/team/shop.git")
            try await put("kept", "https://bot:old-token@git.example.com/team/kept.git")
            try await store.setGitCredential(.token(username: "bot", token: "set-by-a-person"), project: "kept")
            try await put("scp", "git:ssh-password@git.example.com:team/scp.git")
            try await put("plain", "https://git.example.com/team/plain.git")
            let report = try await store.startCheck()
            #expect(report.sealedURLPasswords == ["shop"])
            #expect(report.urlPasswordsLeft.sorted() == ["kept", "scp"])
            let record = try #require(try await store.etcd.get(store.keys.project("shop")))
            #expect(!record.string.contains("glpat"))
            #expect(try KilnJSON.decode(Project.self, from: record.value).repository == "https://git.example.com/team/shop.git")
            #expect(try await store.gitCredential(project: "shop") == .token(username: "deploy+bot", token: "glpat-s3cr@t"))
            let sealed = try #require(try await store.etcd.get(store.keys.gitCredential(project: "shop")))
            #expect(!sealed.string.contains("glpat"))
            // Nothing dropped where it could not move: the person's credential and the URL stay.
            #expect(try await store.gitCredential(project: "kept") == .token(username: "bot", token: "set-by-a-person"))
            #expect(try #require(try await store.etcd.get(store.keys.project("kept"))).string.contains("old-token"))
            #expect(try #require(try await store.etcd.get(store.keys.project("scp"))).string.contains("ssh-password"))
            let again = try await store.startCheck()
            #expect(again.sealedURLPasswords.isEmpty && again.urlPasswordsLeft.sorted() == ["kept", "scp"])
        }
    }

    @Test func aResealMovesEveryValueToTheNewKeyWithoutLosingAWriteMadeMeanwhile() async throws {
        try await withStore { store, path in
            for i in 0..<30 { try await store.setSecret("S\(i)", SecretRequest(value: "value-number-\(i)"), scope: .project("shop")) }
            try await store.setGitCredential(.sshKey(privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----", knownHosts: "h ssh-ed25519 AAAA"), project: "shop")
            _ = try await store.startCheck()
            let old = store.keyring.primaryID
            // A copy of the key file from before the rotation: a writer that still seals under the old key.
            let temp = try TempDir("old-copy")
            let oldPath = temp.path("secrets-key").path
            try CredentialFile.write(try CredentialFile.read(path), to: oldPath)
            let behind = try SecretStore(etcd: store.etcd, keyFile: oldPath)
            let new = try SecretsKeyring.addKey(at: path)
            #expect(store.keyring.primaryID == new)

            let key = store.keys.secret(.project("shop"), env: "S0")
            let writes = Task {
                for n in 0..<40 { try await behind.setSecret("S0", SecretRequest(value: "rewritten-\(n)-times"), scope: .project("shop")) }
            }
            var reports: [SecretsResealReport] = []
            for _ in 0..<3 { reports.append(try await store.reseal()) }
            try await writes.value
            // The writer's last value may still be under the old key; one more reseal moves it.
            let afterWrites = try await store.reseal()
            #expect(afterWrites.resealed[old, default: 0] <= 1 && afterWrites.current >= 31, "\(afterWrites)")
            reports.append(try await store.reseal())
            #expect(reports[0].key == new && reports[0].resealed[old, default: 0] >= 31, "\(reports[0])")
            #expect(reports.allSatisfy { $0.failed.isEmpty } && afterWrites.failed.isEmpty, "\(reports) \(afterWrites)")
            #expect(reports.last!.keysInUse == [new] && reports.last!.current == 32 && reports.last!.resealed.isEmpty, "\(reports.last!)")
            // The last write made meanwhile is what is kept, under the new key.
            let kv = try #require(try await store.etcd.get(key))
            #expect(try store.decode(kv).sealed.kid == new)
            #expect(try await store.secret("S0", of: Self.shop, ref: "main") == .value("rewritten-39-times"))

            // Only the new key left: everything still opens.
            try SecretsKeyring.keepOnly([], at: path)
            #expect(store.keyring.keyIDs == [new])
            let all = try await store.buildSecrets(project: Self.shop, ref: "main")
            #expect(all.env.count == 30 && all.git != nil)
            #expect(try await store.startCheck().byKey == [new: 32])
            withExtendedLifetime(temp) {}
        }
    }

    @Test func aValueUnderAMissingKeyIsReportedNotDropped() async throws {
        try await withStore { store, path in
            try await store.setSecret("KEPT", SecretRequest(value: "under-the-first-key"), scope: .project("shop"))
            let old = store.keyring.primaryID
            // The file loses its key (no reseal first). The running store keeps the key it had
            // (a file without it is another farm's); a restarted one cannot open the value.
            try CredentialFile.write(SecretsKeyring.newKeyLine(), to: path)
            #expect(store.keyring.primaryID == old)
            let restarted = try SecretStore(etcd: store.etcd, keyFile: path)
            let report = try await restarted.reseal()
            #expect(report.failed.count == 1 && report.failed[0].contains("env/KEPT") && report.keysInUse == [restarted.keyring.primaryID, old])
            await #expect { try await restarted.buildSecrets(project: Self.shop, ref: "main") } throws: { "\($0)".contains(old) }
        }
    }
}
