import ArgumentParser
import Foundation
import TLSTrust

/// `--ca-file FILE` (env KILN_CA_FILE): the CA trusted, besides the system's roots, by this
/// process's outgoing TLS connections to Kiln's own parts (`TrustedCA`, docs/tls.md): the
/// CLI's to the API, the agent's to the schedulers, the scheduler's to the registry's API.
struct CAFileOption: ParsableArguments {
    @Option(name: .customLong("ca-file"), help: ArgumentHelp("""
        PEM file of a CA to trust besides the system's roots for https:// connections to the \
        scheduler's API (CLI, agents) and the registry's API (scheduler, agents) (env KILN_CA_FILE): \
        the CA of a farm's private certificates (docs/tls.md). etcd has its own --etcd-ca.
        """, valueName: "file"))
    var caFile: String? = Self.environment

    /// KILN_CA_FILE, nil when unset or empty.
    static var environment: String? { ProcessInfo.processInfo.environment["KILN_CA_FILE"].flatMap { $0.isEmpty ? nil : $0 } }

    func validate() throws { _ = try trusted() }

    /// The CA, read; nil without one.
    func trusted() throws -> TrustedCA? { try Self.trusted(caFile) }

    static func trusted(_ file: String?) throws -> TrustedCA? {
        do { return try TrustedCA.from(option: file) } catch { throw ValidationError("\(error)") }
    }

}
