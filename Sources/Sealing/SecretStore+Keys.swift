import Etcd
import Foundation
import KilnCore

/// What a scheduler's start found in `/kiln/secrets/` (``SecretStore/startCheck(by:)``).
public struct SecretsStartCheck: Sendable, Equatable {
    /// Sealed values, the check among them, by the id of the key each is sealed under.
    public var byKey: [String: Int]
    /// This start wrote the check value (the farm's first start with a key file).
    public var wroteCheck: Bool
    /// Projects whose webhook token was still in their record, in clear: now sealed.
    public var sealedWebhookSecrets: [String]
    /// Projects whose repository URL still held a password (a token), in clear: now their
    /// sealed git credential, and the URL without it.
    public var sealedURLPasswords: [String] = []
    /// Projects whose repository URL still holds a password that could not be moved: the
    /// project has a git credential already (which is kept), or the URL is not HTTP(S). The
    /// scheduler warns with what to do; nothing is dropped.
    public var urlPasswordsLeft: [String] = []

    public var values: Int { byKey.values.reduce(0, +) }
}

extension SecretStore {
    /// The check value's plaintext: nothing secret, only proof that the key opens it.
    static let checkText = "kiln secrets check"

    /// Run before a scheduler serves (so a wrong key is a clear error at start, not a build
    /// failing later):
    /// 1. every value under `/kiln/secrets/` must be sealed under a key the file holds, else
    ///    it throws naming the missing keys and what to do;
    /// 2. the check value (`Keys.secretsCheck`) must open; the first start writes it, so a
    ///    scheduler given another farm's key file is refused even before any secret exists;
    /// 3. a project record still holding its webhook token in clear (written before secrets
    ///    were sealed) has it sealed at `Keys.webhookSecret(project:)` and removed from the
    ///    record, and an HTTP(S) repository URL holding a password has it moved into the
    ///    project's sealed git credential (unless it has one), in one transaction guarded by
    ///    the record's revision (and by the credential's absence).
    public func startCheck(by user: String = "kiln scheduler") async throws -> SecretsStartCheck {
        let held = keyring.keyIDs
        let kvs = try await etcd.range(prefix: keys.secrets).kvs
        var byKey: [String: Int] = [:]
        var foreign: [String: Int] = [:]
        for kv in kvs {
            let stored = try decode(kv)
            byKey[stored.sealed.kid, default: 0] += 1
            if !held.contains(stored.sealed.kid) { foreign[stored.sealed.kid, default: 0] += 1 }
        }
        if !foreign.isEmpty {
            let counts = foreign.sorted { $0.key < $1.key }.map { "\($0.value) under key \($0.key)" }.joined(separator: ", ")
            throw KilnError.unavailable("""
                etcd holds secrets sealed under keys the secrets key file \(keyring.path) does not hold (\(counts); the file holds \
                \(held.joined(separator: ", "))): start every scheduler of this farm with the same key file (copy it from a running \
                scheduler, mode 0600). If a key was dropped from the file by mistake, put its line back from a backup; without it \
                those secrets cannot be opened and must be set again (docs/secrets.md)
                """)
        }
        var wrote = false
        if let kv = kvs.first(where: { $0.key == keys.secretsCheck }) {
            try verifyCheck(kv)
        } else {
            let value = try KilnJSON.encode(try stored(Data(Self.checkText.utf8), at: keys.secretsCheck, by: user))
            let r = try await etcd.txn(Txn(compare: [.createRevision(keys.secretsCheck, .equal, 0)], success: [.put(keys.secretsCheck, value)],
                                           failure: [.get(keys.secretsCheck)]))
            if r.succeeded {
                wrote = true
                byKey[keyring.primaryID, default: 0] += 1
            } else if let other = r.responses.first?.kvs.first {
                // Another scheduler started at the same moment with a key file of its own.
                try verifyCheck(other)
            }
        }
        var check = SecretsStartCheck(byKey: byKey, wroteCheck: wrote, sealedWebhookSecrets: [])
        try await sealSecretsInRecords(by: user, into: &check)
        return check
    }

    func verifyCheck(_ kv: KeyValue) throws {
        let stored = try decode(kv)
        do {
            guard try keyring.openString(stored.sealed, boundTo: kv.key) == Self.checkText else {
                throw KilnError.invalid("it holds something else")
            }
        } catch let error as KilnError {
            throw KilnError.unavailable("the secrets check value \(kv.key) does not open with the key file \(keyring.path) (\(error.message)): this is not the key file of the farm whose etcd this is; start the scheduler with the farm's key file")
        }
    }

    /// Moves secrets still in project records (in clear) into the sealed store: webhook
    /// tokens, and passwords in HTTP(S) repository URLs (which become the git credential).
    func sealSecretsInRecords(by user: String, into check: inout SecretsStartCheck) async throws {
        for first in try await etcd.range(prefix: keys.projects).kvs {
            var kv = first
            for _ in 0..<5 {
                guard var project = try? KilnJSON.decode(Project.self, from: kv.value) else { break }
                var writes: [TxnOp] = []
                var compare: [Compare] = [.modRevision(kv.key, .equal, kv.modRevision)]
                let webhook = project.webhookSecret
                if let webhook {
                    project.webhookSecret = nil
                    if !webhook.isEmpty { writes.append(try webhookSecretWrite(webhook, project: project.name, by: user)) }
                }
                var movedURL = false, leftURL = false
                if Validation.withoutPassword(project.repository) != nil {
                    let credentialKey = keys.gitCredential(project: project.name)
                    if let split = Validation.splitHTTPPassword(project.repository),
                       try await etcd.get(credentialKey) == nil {
                        let credential = GitCredential.token(username: split.username, token: split.password)
                        let value = try stored(try KilnJSON.encoder().encode(credential), at: credentialKey, detail: "token", by: user)
                        writes.append(.put(credentialKey, try KilnJSON.encode(value)))
                        compare.append(.createRevision(credentialKey, .equal, 0))
                        project.repository = split.url
                        movedURL = true
                    } else {
                        leftURL = true
                    }
                }
                if webhook == nil && !movedURL {
                    if leftURL { check.urlPasswordsLeft.append(project.name) }
                    break
                }
                writes.insert(.put(kv.key, try KilnJSON.encode(project)), at: 0)
                let r = try await etcd.txn(Txn(compare: compare, success: writes, failure: [.get(kv.key)]))
                if r.succeeded {
                    if webhook != nil { check.sealedWebhookSecrets.append(project.name) }
                    if movedURL { check.sealedURLPasswords.append(project.name) }
                    if leftURL { check.urlPasswordsLeft.append(project.name) }
                    break
                }
                guard let fresh = r.responses.first?.kvs.first else { break }  // deleted meanwhile
                kv = fresh  // the record or the credential changed: look again
            }
        }
    }

    /// Seals every value again under the key file's first key, so the keys before it may
    /// leave the file (`kiln secrets rotate`). Safe while the farm runs: each value is
    /// rewritten in a transaction guarded by its revision, and read again and retried when
    /// someone changed it meanwhile (a value set meanwhile is under the new key already).
    /// A value that cannot be opened (its key is not in the file) is reported in `failed`,
    /// and its key stays in `keysInUse`.
    public func reseal() async throws -> SecretsResealReport {
        let primary = keyring.primaryID
        var report = SecretsResealReport(key: primary)
        var inUse: Set<String> = [primary]
        for kv in try await etcd.range(prefix: keys.secrets).kvs {
            do {
                switch try await reseal(kv, under: primary) {
                case .current: report.current += 1
                case .resealed(let from): report.resealed[from, default: 0] += 1
                case .gone: break
                }
            } catch {
                report.failed.append("\(kv.key): \(error)")
                if let stored = try? KilnJSON.decode(StoredSecret.self, from: kv.value) { inUse.insert(stored.sealed.kid) }
            }
        }
        report.keysInUse = [primary] + inUse.subtracting([primary]).sorted()
        return report
    }

    enum ResealOutcome: Equatable {
        case current
        case resealed(from: String)
        case gone
    }

    func reseal(_ first: KeyValue, under primary: String) async throws -> ResealOutcome {
        var kv = first
        for _ in 0..<50 {
            var stored = try decode(kv)
            if stored.sealed.kid == primary { return .current }
            let from = stored.sealed.kid
            // Who set the value and when stays: a reseal changes only how it is sealed.
            stored.sealed = try keyring.seal(try openData(stored, at: kv.key), boundTo: stored.binding(at: kv.key))
            let r = try await etcd.txn(Txn(compare: [.modRevision(kv.key, .equal, kv.modRevision)],
                                           success: [.put(kv.key, try KilnJSON.encode(stored))], failure: [.get(kv.key)]))
            if r.succeeded { return .resealed(from: from) }
            guard let fresh = r.responses.first?.kvs.first else { return .gone }
            kv = fresh
        }
        throw KilnError.unavailable("it kept changing while it was being sealed again: run the reseal again")
    }
}
