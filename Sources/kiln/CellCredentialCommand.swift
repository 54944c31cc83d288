import ArgumentParser
import Foundation
import KilnClient
import KilnCore

extension CellCommand {
    /// `kiln cell credential set|rm`: how the scheduler logs in to a Kubernetes cell, or to a
    /// local cell's TLS proxy (an `https://` endpoint).
    struct Credential: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set or remove a cell's credential: a Kubernetes cell's, or an https local cell's (admins).",
            discussion: """
            Each Kubernetes cell has its own: a bearer token (a service account's; prefer a \
            short-lived one, bound by a Role in each app's namespace: docs/kubernetes.md) or a \
            client certificate and key, and the cluster's CA certificate that the API server's \
            certificate must chain to. A local cell at an https:// endpoint (an engine on another \
            host behind a TLS proxy) takes a client certificate and key that the proxy's client CA \
            signed, and the CA of the proxy's own certificate (docs/cells.md). Sealed in etcd; \
            nobody reads it back.

            Examples:
              kubectl create token kiln -n apps --duration 24h | kiln cell credential set k1 --ca-file ca.crt
              kiln cell credential set k1 --client-cert-file kiln.crt --client-key-file kiln.key --ca-file ca.crt
              kiln cell credential set b --client-cert-file kiln.crt --client-key-file kiln.key --ca-file cells-ca.crt
              kiln cell credential rm k1
            """,
            subcommands: [Set.self, Remove.self])

        struct Set: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Set a cell's credential: a token (standard input or --token-file) or a client certificate, and the cluster's CA.")
            // --ca-file is the cluster's CA here: the API's own comes from KILN_CA_FILE.
            @OptionGroup var api: APIOptionsCAFromEnv
            @Argument(help: "The cell.") var name: String
            @Option(name: .long, help: ArgumentHelp("The CA certificate the server's certificate must chain to (PEM): the cluster's, or a local cell's TLS proxy's.", valueName: "file")) var caFile: String
            @Option(name: .long, help: ArgumentHelp("Read the bearer token from this file (mode 0600) instead of standard input.", valueName: "file")) var tokenFile: String?
            @Option(name: .long, help: ArgumentHelp("A client certificate (PEM) instead of a token.", valueName: "file")) var clientCertFile: String?
            @Option(name: .long, help: ArgumentHelp("The client certificate's private key (PEM, mode 0600).", valueName: "file")) var clientKeyFile: String?

            func validate() throws {
                if (clientCertFile == nil) != (clientKeyFile == nil) { throw ValidationError("give both --client-cert-file and --client-key-file, or a token") }
                if clientCertFile != nil, tokenFile != nil { throw ValidationError("give a token or a client certificate, not both") }
            }

            func run() async throws {
                let ca = try SecretInput.readPlain(caFile, what: "the CA certificate")
                var credential = CellCredential(certificateAuthority: ca)
                if let clientCertFile, let clientKeyFile {
                    credential.clientCertificate = try SecretInput.readPlain(clientCertFile, what: "the client certificate")
                    credential.clientKey = try SecretInput.read(file: clientKeyFile, what: "the client key") + "\n"
                } else {
                    credential.token = try SecretInput.read(file: tokenFile, what: "the bearer token of cell \(name)")
                }
                do { try credential.validate() } catch { throw ValidationError("\(error)") }
                let info = try await api.client().put("/api/v1/cells/\(name)/credentials", body: credential, as: SecretInfo.self)
                say("credential of cell \(name) set (\(info.detail ?? "sealed"))")
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a cell's credential: deploys to it fail until one is set.")
            @OptionGroup var api: APIOptions
            @Argument(help: "The cell.") var name: String

            func run() async throws {
                _ = try await api.client().raw("DELETE", "/api/v1/cells/\(name)/credentials")
                say("credential of cell \(name) removed")
            }
        }
    }
}
