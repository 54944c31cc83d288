import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct CellCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cell",
        abstract: "Add, list and remove cells: where apps run.",
        discussion: """
        A cell is one Docker Engine API endpoint (backend local: podman's service or dockerd) \
        or one Kubernetes API server (backend kubernetes). The deploy plugin runs every app in \
        all cells of its backend unless its step names them; LeEngine ran every app in at \
        least two. A local cell on another host is an engine behind a TLS proxy that asks for \
        a client certificate, at https://HOST:PORT with `kiln cell credential set` \
        (docs/cells.md).
        """,
        subcommands: [Add.self, List.self, Remove.self, Credential.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add or change a cell.",
            discussion: """
            Example: kiln cell add a --endpoint unix:///run/podman/podman.sock --ports 20000-20499
                     kiln cell add b --endpoint https://cell-b:2376 --advertise-host 10.0.0.12
                     kiln cell credential set b --client-cert-file kiln.crt --client-key-file kiln.key --ca-file cells-ca.crt
                     kiln cell add k1 --backend kubernetes --endpoint https://10.0.0.1:6443

            A local endpoint is unix:///path (an engine on this machine), http://127.0.0.1:PORT \
            (this machine's loopback only: plain HTTP elsewhere is refused), or https://HOST:PORT \
            (an engine on another host behind a TLS proxy that asks for a client certificate; \
            the certificate, its key and the proxy's CA are the cell's credential).
            """)
        @OptionGroup var api: APIOptions
        @Argument(help: "Cell name: lowercase letters, digits and '-'.") var name: String
        @Option(name: .long, help: "local (Docker Engine API) or kubernetes.") var backend = "local"
        @Option(name: .long, help: ArgumentHelp("unix:///path/to/docker.sock, http://127.0.0.1:port or https://host:port (local); https://host:port (kubernetes).", valueName: "url")) var endpoint: String
        @Option(name: .long, help: ArgumentHelp("Host ports the local backend publishes instances on (default 20000-29999); give cells on one machine ranges that do not overlap.", valueName: "first-last")) var ports: String?
        @Option(name: .long, help: ArgumentHelp("Address nginx and the scheduler reach published ports on (default 127.0.0.1: set it for a cell on another host).", valueName: "host")) var advertiseHost: String?

        func cell() throws -> Cell {
            var first: Int?, last: Int?
            if let ports {
                let parts = ports.split(separator: "-")
                guard parts.count == 2, let f = Int(parts[0]), let l = Int(parts[1]) else {
                    throw ValidationError("--ports must be FIRST-LAST, for example 20000-20499, not '\(ports)'")
                }
                first = f
                last = l
            }
            let c = Cell(name: name, backend: backend, endpoint: endpoint, firstPort: first, lastPort: last, advertiseHost: advertiseHost)
            do { try c.validate() } catch { throw ValidationError("\(error)") }
            return c
        }

        func validate() throws { _ = try cell() }

        func run() async throws {
            let c = try cell()
            if let warning = c.advertiseHostWarning { FileHandle.standardError.write(Data((warning + "\n").utf8)) }
            let data = try await try api.client().raw("PUT", "/api/v1/cells/\(c.name)", body: try KilnJSON.encoder().encode(c))
            if api.json { print(String(decoding: data, as: UTF8.self)) } else { print("cell \(c.name) saved: \(c.backend) \(c.endpoint)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List cells.")
        @OptionGroup var api: APIOptions
        func run() async throws {
            let cells = try await try api.client().get("/api/v1/cells", as: [Cell].self)
            if api.json { Show.printJSON(cells); return }
            if cells.isEmpty { print("no cells: add one with `kiln cell add NAME --endpoint unix:///path/to/docker.sock`") }
            for c in cells {
                print("\(c.name.padding(toLength: 12, withPad: " ", startingAt: 0)) \(c.backend.padding(toLength: 11, withPad: " ", startingAt: 0)) \(c.endpoint)\(c.backend == "local" ? "  ports \(c.ports.lowerBound)-\(c.ports.upperBound)" : "")")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a cell. What runs there keeps running; later deploys naming it fail.")
        @OptionGroup var api: APIOptions
        @Argument(help: "Cell name.") var name: String
        func run() async throws {
            _ = try await try api.client().raw("DELETE", "/api/v1/cells/\(name)")
            print("cell \(name) removed")
        }
    }
}
