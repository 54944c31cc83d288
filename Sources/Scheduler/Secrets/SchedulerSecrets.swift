import Etcd
import Foundation
import KilnCore
import Logging
import Sealing

/// This scheduler's sealed secrets: the store when it was started with a key file
/// (`--secrets-key-file`), else the reason every route that needs one answers 503.
///
/// Rule: a route checks who asks first, then calls ``require(to:)``, so someone without a role
/// learns nothing from a 503.
public struct SchedulerSecrets: Sendable {
    /// Nil: no key file, or one that could not be read (`problem` says why).
    public let store: SecretStore?
    let problem: KilnError?
    let etcd: EtcdClient
    let keys: Keys

    /// `keyFile`: the path of `--secrets-key-file`; nil for a scheduler without one.
    public init(keyFile: String?, etcd: EtcdClient, keys: Keys) {
        self.etcd = etcd
        self.keys = keys
        guard let keyFile else {
            store = nil
            problem = nil
            return
        }
        do {
            store = try SecretStore(etcd: etcd, keys: keys, keyFile: keyFile)
            problem = nil
        } catch let error as KilnError {
            store = nil
            problem = error
        } catch {
            store = nil
            problem = KilnError.invalid("the secrets key file \(keyFile) cannot be read: \(error)")
        }
    }

    /// The store, or a 503 that says how to start the scheduler so it has one.
    func require(to what: String) throws -> SecretStore {
        if let store { return store }
        throw KilnError.unavailable("this scheduler cannot \(what): it was started without the secrets key file; start it with --secrets-key-file FILE (env KILN_SECRETS_KEY_FILE; kiln up makes <data-dir>/credentials/secrets-key, `kiln secrets key new --file FILE` makes one)")
    }

    /// Run before the scheduler serves: a key file that cannot be read, or one that does not
    /// open what etcd holds, stops the start with a message saying what to do
    /// (``SecretStore/startCheck(by:)``). Without a key file, a farm whose etcd already
    /// holds sealed secrets is refused too, since this scheduler could not serve them.
    func checkAtStart(logger: Logger) async throws {
        if let problem { throw problem }
        guard let store else {
            let sealed = try await etcd.range(prefix: keys.secrets, limit: 1).count
            if sealed > 0 {
                throw KilnError.unavailable("etcd holds \(sealed) sealed secrets under \(keys.secrets) but this scheduler has no secrets key file: start it with --secrets-key-file FILE (env KILN_SECRETS_KEY_FILE), a copy of the key file the farm's other schedulers use")
            }
            logger.notice("no --secrets-key-file: secrets and credentials cannot be set or given to builds (those routes answer 503), and webhook tokens stay in project records in clear")
            return
        }
        let check = try await store.startCheck()
        logger.notice("secrets: sealing under key \(store.keyring.primaryID) (key file \(store.keyring.path)); \(check.values) sealed values in etcd\(check.wroteCheck ? ", check value written (first start with a key)" : "")")
        if !check.sealedWebhookSecrets.isEmpty {
            logger.notice("webhook tokens of \(check.sealedWebhookSecrets.count) projects moved from their records into the sealed store", metadata: ["projects": "\(check.sealedWebhookSecrets.joined(separator: ","))"])
        }
        if !check.sealedURLPasswords.isEmpty {
            logger.notice("passwords in the repository URLs of \(check.sealedURLPasswords.count) projects moved into their sealed git credentials", metadata: ["projects": "\(check.sealedURLPasswords.joined(separator: ","))"])
        }
        if !check.urlPasswordsLeft.isEmpty {
            logger.warning("the repository URLs of \(check.urlPasswordsLeft.count) projects still hold a password in clear (they have a git credential already, or are not HTTP(S)): give each URL without it (`kiln project add` with the same name and the URL alone) and keep the credential in `kiln credential set git`", metadata: ["projects": "\(check.urlPasswordsLeft.joined(separator: ","))"])
        }
        let old = check.byKey.keys.filter { $0 != store.keyring.primaryID }
        if !old.isEmpty {
            logger.notice("secrets are still sealed under keys \(old.sorted().joined(separator: ", ")) besides the first: run `kiln secrets reseal` to finish a rotation")
        }
    }
}
