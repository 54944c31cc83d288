@testable import Deploy
import Foundation
import KilnCore
import Testing

/// The rendering rules of a domain's file, without nginx (the lb-agent tests run it for real).
@Suite struct NginxConfigTests {
    let config = NginxConfig(group: "web", listen: "127.0.0.1:8088", directory: URL(fileURLWithPath: "/tmp/lb"))

    func render(_ d: SLBDomain) throws -> String {
        try config.domainFile(domain: d.domain, value: Array(try KilnJSON.encode(d).utf8)).get()
    }

    @Test func anUpstreamOfWeightedServersAndAServerBlockForTheName() throws {
        let text = try render(SLBDomain(domain: "demo.localhost", servers: [SLBServer(address: "127.0.0.1:20001", weight: 3), SLBServer(address: "app-2.internal:80")]))
        #expect(text.contains("upstream slb_demo.localhost {\n    server 127.0.0.1:20001 weight=3 max_fails=2 fail_timeout=5s;\n    server app-2.internal:80 max_fails=2 fail_timeout=5s;\n}"))
        #expect(text.contains("server_name demo.localhost;"))
        #expect(text.contains("listen 127.0.0.1:8088;") && !text.contains("default_server"))
        #expect(text.contains("proxy_pass http://slb_demo.localhost;"))
        #expect(text.contains("proxy_next_upstream error timeout http_502 http_503;"))
        #expect(text.contains("proxy_set_header Host $host;"))
    }

    @Test func aDomainsSettingReplacesTheAgentsDefault() throws {
        let text = try render(SLBDomain(domain: "demo.localhost", servers: [SLBServer(address: "127.0.0.1:20001")],
                                        settings: ["proxy_next_upstream_tries": "5", "client_max_body_size": "10m"]))
        #expect(text.components(separatedBy: "proxy_next_upstream_tries").count == 2, "one directive, not two:\n\(text)")
        #expect(text.contains("proxy_next_upstream_tries 5;") && text.contains("client_max_body_size 10m;"))
        #expect(text.contains("proxy_connect_timeout 2s;"))
    }

    @Test func aDomainWithoutServersAnswers503() throws {
        let text = try render(SLBDomain(domain: "empty.localhost", servers: []))
        #expect(!text.contains("upstream slb_") && !text.contains("proxy_pass"))
        #expect(text.contains(#"return 503 "empty.localhost has no upstream servers in lb group web\n";"#))
    }

    @Test func theMainFileKeepsEverythingUnderItsFolder() {
        let text = config.mainFile(domainsFolder: URL(fileURLWithPath: "/tmp/lb/domains"))
        #expect(text.contains("daemon off;") && text.contains("pid /tmp/lb/nginx.pid;") && text.contains("error_log /tmp/lb/logs/error.log"))
        for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] { #expect(text.contains("\(temp)_temp_path /tmp/lb/temp/\(temp);")) }
        #expect(text.contains("listen 127.0.0.1:8088 default_server;"))
        #expect(text.contains("include /tmp/lb/domains/*.conf;"))
    }
}
