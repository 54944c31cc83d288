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

    // MARK: with the Lua module

    var luaConfig: NginxConfig {
        var c = config
        c.lua = NginxLua(modules: [URL(fileURLWithPath: "/m/ndk_http_module.so"), URL(fileURLWithPath: "/m/ngx_http_lua_module.so")],
                         script: URL(fileURLWithPath: "/tmp/lb/lua/kiln_lb.lua"), controlSocket: URL(fileURLWithPath: "/tmp/lb/control/nginx.sock"))
        return c
    }

    func renderLua(_ d: SLBDomain, revision: Int64 = 7) throws -> String {
        try luaConfig.domainFile(domain: d.domain, value: Array(try KilnJSON.encode(d).utf8), revision: revision).get()
    }

    @Test func theMainFileLoadsNdkThenLuaAndListensForTheAgentOnAUnixSocket() {
        let text = luaConfig.mainFile(domainsFolder: URL(fileURLWithPath: "/tmp/lb/domains"))
        #expect(text.hasPrefix("# Written by") && text.contains("load_module /m/ndk_http_module.so;\nload_module /m/ngx_http_lua_module.so;\ndaemon off;"))
        #expect(text.contains("lua_shared_dict kiln_servers 16m;") && text.contains("init_by_lua_file /tmp/lb/lua/kiln_lb.lua;"))
        #expect(text.contains("listen unix:/tmp/lb/control/nginx.sock;"))
        #expect(!config.mainFile(domainsFolder: URL(fileURLWithPath: "/tmp/lb/domains")).contains("lua"))
    }

    @Test func anUpstreamOfAddressesIsBalancedByLuaWithItsServersAsSeed() throws {
        let text = try renderLua(SLBDomain(domain: "demo.localhost", servers: [SLBServer(address: "127.0.0.1:20001", weight: 3), SLBServer(address: "10.0.0.2:80")]))
        #expect(text.contains(#"balancer_by_lua_block { require("kiln_lb").balance("demo.localhost", "7 127.0.0.1:20001=3 10.0.0.2:80=1") }"#), "\(text)")
        #expect(!text.contains("max_fails"))
        #expect(text.contains("proxy_next_upstream error timeout http_502 http_503;") && text.contains("proxy_pass http://slb_demo.localhost;"))
        let split = try #require(NginxLua.split(text))
        #expect(split.servers == "7 127.0.0.1:20001=3 10.0.0.2:80=1")
        // A host name cannot be balanced by Lua (it takes addresses): that domain keeps nginx's upstream.
        let named = try renderLua(SLBDomain(domain: "demo.localhost", servers: [SLBServer(address: "app-2.internal:80")]))
        #expect(named.contains("server app-2.internal:80 max_fails=2") && NginxLua.split(named) == nil)
    }

    @Test func onlyAChangeOfServersAloneSkipsTheReload() throws {
        let one = SLBDomain(domain: "demo.localhost", servers: [SLBServer(address: "127.0.0.1:20001")])
        let live = ["demo.localhost": try renderLua(one, revision: 5), "b.localhost": try renderLua(SLBDomain(domain: "b.localhost", servers: []))]
        var moved = one
        moved.servers = [SLBServer(address: "127.0.0.1:20002", weight: 2)]
        var next = live
        next["demo.localhost"] = try renderLua(moved, revision: 9)
        #expect(Applier.serversOnly(from: live, to: next) == ["demo.localhost": "9 127.0.0.1:20002=2"])

        var settings = moved
        settings.settings = ["client_max_body_size": "1m"]
        next["demo.localhost"] = try renderLua(settings, revision: 9)
        #expect(Applier.serversOnly(from: live, to: next) == nil, "settings changed")
        next = live
        next["c.localhost"] = try renderLua(SLBDomain(domain: "c.localhost", servers: [SLBServer(address: "127.0.0.1:1")]))
        #expect(Applier.serversOnly(from: live, to: next) == nil, "a domain added")
        next = live
        next["demo.localhost"] = try renderLua(SLBDomain(domain: "demo.localhost", servers: []), revision: 9)
        #expect(Applier.serversOnly(from: live, to: next) == nil, "no servers left: a 503 server instead of the upstream")
    }
}
