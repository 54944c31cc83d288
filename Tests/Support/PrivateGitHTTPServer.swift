import Foundation
import LocalFarm
import Processes
#if canImport(Glibc)
import Glibc
#endif

/// A private git server over HTTP for tests, as GitLab serves one: nginx (`nginx-light`) asks
/// for HTTP Basic authentication (`auth_basic`, an htpasswd file with one user and an apr1
/// hash) in front of `git http-backend`, run as CGI by fcgiwrap on a unix socket in the
/// server's own folder. It serves every bare repository under `root`
/// (`http://127.0.0.1:PORT/NAME.git`).
///
/// Plain HTTP, on loopback only: it stands in for HTTPS. The agent's credential callback is
/// the same for both (libgit2 asks it after a 401 either way); TLS itself is libgit2's own.
/// Both processes are stopped by PID (`stop`, or when the value goes away).
public final class PrivateGitHTTPServer: Sendable {
    public let port: Int
    /// The one user nginx lets in.
    public let username: String
    private let folder: TempDir
    private let nginx: ManagedProcess
    private let fcgiwrap: ManagedProcess

    /// The server as a fetch policy allows it (`--allow-fetch-from`).
    public var server: String { "127.0.0.1:\(port)" }
    /// The URL of the bare repository `name` (a path under `root`, such as `origin.git`).
    public func url(_ name: String) -> String { "http://127.0.0.1:\(port)/\(name)" }

    private init(port: Int, username: String, folder: TempDir, nginx: ManagedProcess, fcgiwrap: ManagedProcess) {
        self.port = port
        self.username = username
        self.folder = folder
        self.nginx = nginx
        self.fcgiwrap = fcgiwrap
    }

    deinit { stop() }

    /// Starts nginx and fcgiwrap on a free loopback port, serving the bare repositories under
    /// `root` to `username` with `password` only; returns once nginx answers.
    public static func start(root: URL, username: String, password: String) async throws -> PrivateGitHTTPServer {
        guard let backend = ["/usr/lib/git-core/git-http-backend", "/usr/libexec/git-core/git-http-backend"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw FarmError("private git server: git-http-backend is missing (apt-get install git)")
        }
        let folder = try TempDir("git-http-auth")
        let dir = folder.url.path
        for sub in ["logs", "temp"] { try FileManager.default.createDirectory(at: folder.path(sub), withIntermediateDirectories: true) }
        // The password goes to openssl on its stdin, never on a command line.
        let hashed = try await onThread { try Spawn.run("/usr/bin/openssl", ["passwd", "-apr1", "-stdin"], input: Data(password.utf8), discardStderr: true) }
        let hash = String(decoding: hashed.output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard hashed.status == 0, hash.hasPrefix("$apr1$") else { throw FarmError("openssl passwd -apr1 failed: \(hash)") }
        try Data("\(username):\(hash)\n".utf8).write(to: folder.path("htpasswd"))

        let socket = "\(dir)/fcgiwrap.sock"
        // One process, no -c: its forked children would outlive a stop by PID. A fetch sends
        // its requests one after the other.
        let fcgiwrap = try ManagedProcess(name: "fcgiwrap", executable: "fcgiwrap", arguments: ["-f", "-s", "unix:\(socket)"],
                                          logFile: folder.path("logs/fcgiwrap.log"))
        try await fcgiwrap.waitUntilReady(timeout: 10) { FileManager.default.fileExists(atPath: socket) }

        let port = try FreePort.next()
        try config(dir: dir, port: port, socket: socket, backend: backend, root: root.path).write(to: folder.path("nginx.conf"), atomically: true, encoding: .utf8)
        let nginx = try ManagedProcess(name: "nginx (private git)", executable: "nginx", arguments: ["-p", dir, "-c", "\(dir)/nginx.conf"],
                                       logFile: folder.path("logs/nginx.out"))
        let server = PrivateGitHTTPServer(port: port, username: username, folder: folder, nginx: nginx, fcgiwrap: fcgiwrap)
        try await nginx.waitUntilReady(timeout: 10) { FreePort.isInUse(port) }
        return server
    }

    /// The nginx configuration: Basic authentication on every path, then the CGI.
    static func config(dir: String, port: Int, socket: String, backend: String, root: String) -> String {
        NginxTestConfig.wrap(dir: dir, logFormat: "$status $remote_user \"$request\"", connections: 64, server: """
            server {
                listen 127.0.0.1:\(port);
                location / {
                    auth_basic "kiln test git";
                    auth_basic_user_file \(dir)/htpasswd;
                    client_max_body_size 0;
                    fastcgi_pass unix:\(socket);
                    fastcgi_param SCRIPT_FILENAME \(backend);
                    fastcgi_param GIT_PROJECT_ROOT \(root);
                    fastcgi_param GIT_HTTP_EXPORT_ALL 1;
                    fastcgi_param GIT_CONFIG_COUNT 1;
                    fastcgi_param GIT_CONFIG_KEY_0 safe.directory;
                    fastcgi_param GIT_CONFIG_VALUE_0 *;
                    fastcgi_param PATH_INFO $uri;
                    fastcgi_param QUERY_STRING $query_string;
                    fastcgi_param REQUEST_METHOD $request_method;
                    fastcgi_param CONTENT_TYPE $content_type;
                    fastcgi_param CONTENT_LENGTH $content_length;
                    fastcgi_param REMOTE_USER $remote_user;
                    fastcgi_param HTTP_GIT_PROTOCOL $http_git_protocol;
                }
            }
            """)
    }

    /// One request nginx answered.
    public struct Request: Sendable, Equatable {
        public let status: Int
        /// The user name the request carried ("-" for none), whether or not it was let in.
        public let user: String
        /// `GET /origin.git/info/refs?service=git-upload-pack HTTP/1.1`.
        public let line: String
    }

    /// Every request so far, from nginx's access log (written as each one ends).
    public var requests: [Request] {
        guard let text = try? String(contentsOf: folder.path("logs/access.log"), encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ", maxSplits: 2)
            guard parts.count == 3, let status = Int(parts[0]) else { return nil }
            return Request(status: status, user: String(parts[1]), line: String(parts[2].dropFirst().dropLast()))
        }
    }

    /// Stops nginx and fcgiwrap by PID; harmless twice.
    public func stop() {
        nginx.stop(grace: 5)
        fcgiwrap.stop(grace: 5)
    }
}
