import ArgumentParser
import Etcd
import Foundation
import KilnCore
import Logging

/// How a process authenticates to etcd and secures the connection: the options of every
/// command that opens etcd itself (scheduler, agent, lb-agent, etcd-auth).
struct EtcdAccessOptions: ParsableArguments {
    @Option(name: .customLong("etcd-credentials"), help: ArgumentHelp(
        "File holding this process's etcd user as user:password, mode 0600 (env KILN_ETCD_CREDENTIALS). `kiln up` writes one per process in <data-dir>/credentials/; for a real cluster see `kiln etcd-auth setup` and docs/etcd-auth.md. Without it the process is anonymous, which an etcd with authentication on refuses.",
        valueName: "file"))
    var credentials: String? = Self.optionalEnv("KILN_ETCD_CREDENTIALS")

    @Option(name: .customLong("etcd-ca"), help: ArgumentHelp(
        "PEM file of the CA that signed etcd's server certificate (env KILN_ETCD_CA). Needs an https:// --etcd; without it the system's trust roots are used. etcd anywhere but on this machine's loopback must be reached over https://.",
        valueName: "file"))
    var ca: String? = Self.optionalEnv("KILN_ETCD_CA")

    @Option(name: .customLong("etcd-cert"), help: ArgumentHelp(
        "PEM client certificate for an etcd started with --client-cert-auth (env KILN_ETCD_CERT); needs --etcd-key.",
        valueName: "file"))
    var certificate: String? = Self.optionalEnv("KILN_ETCD_CERT")

    @Option(name: .customLong("etcd-key"), help: ArgumentHelp(
        "PEM private key of --etcd-cert (env KILN_ETCD_KEY).",
        valueName: "file"))
    var key: String? = Self.optionalEnv("KILN_ETCD_KEY")

    /// The help of every `--etcd` option.
    static let etcdHelp = ArgumentHelp(
        "etcd's client URL; for a cluster, every member's URL separated by commas (https://etcd-1:2379,https://etcd-2:2379,https://etcd-3:2379): a request goes to the first that answers and moves on when a member fails; watches resume on the next one from their revision (env KILN_ETCD; docs/etcd-operations.md).",
        valueName: "url[,url…]")

    /// The variable's value, or nil if it is unset or empty.
    static func optionalEnv(_ name: String) -> String? {
        ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
    }

    var tls: EtcdTLS? {
        ca == nil && certificate == nil && key == nil ? nil : EtcdTLS(caFile: ca, certificateFile: certificate, keyFile: key)
    }

    /// The user and password of `--etcd-credentials`, or nil.
    func readCredentials() throws -> EtcdCredentials? {
        guard let credentials else { return nil }
        do {
            let pair = try UserPassword.read(credentials)
            return EtcdCredentials(user: pair.user, password: pair.password)
        } catch let error as KilnError {
            throw ValidationError("--etcd-credentials: \(error.message)")
        }
    }

    /// Refuses, at start, what every etcd call would refuse later: no URL, one twice, plain
    /// HTTP off loopback, TLS files that cannot be read, a credential file that is unreadable
    /// or readable by others. `endpoint` is `--etcd` as given (one URL or several).
    func check(endpoint: String) throws {
        do {
            try EtcdClient.checkEndpoints(EtcdClient.parseEndpoints(endpoint), tls: tls)
            if let tls { _ = try EtcdClient.tlsHTTPClient(for: tls) }
        } catch let error as EtcdError {
            throw ValidationError(error.message)
        }
        _ = try readCredentials()
    }

    func client(endpoint: String, logger: Logger) throws -> EtcdClient {
        EtcdClient(endpoint: endpoint, logger: logger, credentials: try readCredentials(), tls: tls)
    }
}
