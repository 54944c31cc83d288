import Foundation
import Processes

/// Certificates for tests of TLS, made with openssl in `dir`: a CA (`ca`), another CA that
/// signed nothing here (`otherCA`, for "not trusted"), a server certificate of the CA for
/// `127.0.0.1` and `localhost` (serverAuth and clientAuth, as etcd's peers need both), and a
/// client certificate of the CA. P-256 keys, valid for a day; the keys have mode 0600.
public struct TestCA: Sendable {
    public let ca: String, otherCA: String
    public let serverCertificate: String, serverKey: String
    public let clientCertificate: String, clientKey: String

    public init(_ dir: URL) throws {
        func path(_ name: String) -> String { dir.appendingPathComponent(name).path }
        func openssl(_ arguments: [String]) throws {
            let r = try Spawn.run("/usr/bin/openssl", arguments)
            guard r.status == 0 else { throw FarmError("openssl \(arguments.joined(separator: " ")) failed: \(String(decoding: r.output, as: UTF8.self))") }
        }
        let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for name in ["ca", "other-ca"] {
            try openssl(["req", "-x509"] + curve + ["-keyout", path("\(name).key"), "-out", path("\(name).pem"), "-days", "1", "-subj", "/CN=kiln-test-\(name)"])
        }
        for (name, usage) in [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"), ("client", "extendedKeyUsage=clientAuth")] {
            try openssl(["req"] + curve + ["-keyout", path("\(name).key"), "-out", path("\(name).csr"), "-subj", "/CN=kiln-test-\(name)"])
            try usage.write(toFile: path("\(name).ext"), atomically: true, encoding: .utf8)
            try openssl(["x509", "-req", "-in", path("\(name).csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"), "-CAcreateserial",
                         "-out", path("\(name).pem"), "-days", "1", "-extfile", path("\(name).ext")])
        }
        for key in ["ca.key", "other-ca.key", "server.key", "client.key"] {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path(key))
        }
        ca = path("ca.pem")
        otherCA = path("other-ca.pem")
        serverCertificate = path("server.pem")
        serverKey = path("server.key")
        clientCertificate = path("client.pem")
        clientKey = path("client.key")
    }
}
