import Foundation

/// The frame of the nginx configurations the tests start (a TLS proxy in front of a cell's
/// engine, a git server behind basic auth): in the foreground, one worker, every file under
/// `dir` (`logs/`, `temp/`), an access log of `logFormat`, and `server`, the test's own
/// `server { … }` block, inside `http`.
public enum NginxTestConfig {
    public static func wrap(dir: String, logFormat: String, connections: Int, server: String) -> String {
        // Workers of a root master run as nobody, who may not read root's files or sockets.
        let user = geteuid() == 0 ? "user root root;\n" : ""
        return """
        daemon off;
        \(user)worker_processes 1;
        pid \(dir)/nginx.pid;
        error_log \(dir)/logs/error.log info;
        events { worker_connections \(connections); }
        http {
            log_format test '\(logFormat)';
            access_log \(dir)/logs/access.log test;
            client_body_temp_path \(dir)/temp/client_body;
            proxy_temp_path \(dir)/temp/proxy;
            fastcgi_temp_path \(dir)/temp/fastcgi;
            uwsgi_temp_path \(dir)/temp/uwsgi;
            scgi_temp_path \(dir)/temp/scgi;
        \(server.split(separator: "\n", omittingEmptySubsequences: false).map { $0.isEmpty ? "" : "    " + $0 }.joined(separator: "\n"))
        }

        """
    }
}
