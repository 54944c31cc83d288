import Foundation
import KilnCore
import Plugins
import Testing

/// The notify allow-list's prefix rule (`NotifyAllowList`), against URLs made to slip past it.
@Suite struct NotifyAllowListTests {
    func list(_ prefixes: String...) throws -> NotifyAllowList { try NotifyAllowList(prefixes) }

    @Test func aPrefixAllowsItsOwnPathAndWhatIsBelowIt() throws {
        let l = try list("https://hooks.example.com/a")
        #expect(l.allowed("https://hooks.example.com/a")?.url == "https://hooks.example.com/a")
        #expect(l.allowed("https://hooks.example.com/a/b/c")?.url == "https://hooks.example.com/a/b/c")
        #expect(l.allowed("https://hooks.example.com/a/b?token=x&y=1")?.url == "https://hooks.example.com/a/b?token=x&y=1")
        #expect(l.allowed("https://hooks.example.com/ab") == nil)
        #expect(l.allowed("https://hooks.example.com/") == nil)
        #expect(l.allowed("https://hooks.example.com/b/a") == nil)

        let slash = try list("https://hooks.example.com/services/")
        #expect(slash.allowed("https://hooks.example.com/services/T1/B2") != nil)
        #expect(slash.allowed("https://hooks.example.com/services") == nil)
        #expect(slash.allowed("https://hooks.example.com/servicesX/") == nil)

        let host = try list("https://hooks.example.com")
        #expect(host.allowed("https://hooks.example.com/anything/at/all") != nil)
        #expect(host.allowed("https://hooks.example.com") != nil)
    }

    @Test func otherHostsSchemesAndPortsAreRefused() throws {
        let l = try list("https://hooks.example.com/a")
        for url in [
            "https://hooks.example.com.evil/a",
            "https://hooks.example.com.evil.net/a",
            "https://evilhooks.example.com/a",
            "https://example.com/a",
            "http://hooks.example.com/a",
            "https://hooks.example.com:8443/a",
            "https://hooks.example.com:443.evil/a",
            "ftp://hooks.example.com/a",
            "https://[::1]/a",
            "https://127.0.0.1/a",
        ] {
            #expect(l.allowed(url) == nil, "\(url)")
        }
        // The scheme's default port is the same port, written or not; case does not matter.
        #expect(l.allowed("https://hooks.example.com:443/a") != nil)
        #expect(l.allowed("HTTPS://Hooks.Example.COM/a")?.url == "https://hooks.example.com/a")
        #expect(try list("http://127.0.0.1:8080/x").allowed("http://127.0.0.1:8080/x/y") != nil)
        #expect(try list("http://127.0.0.1:8080/x").allowed("http://127.0.0.1:8081/x") == nil)
        #expect(try list("https://[::1]:6443/").allowed("https://[::1]:6443/hook")?.origin == "https://[::1]:6443")
    }

    @Test func userInformationFragmentsAndOddCharactersAreRefused() throws {
        let l = try list("https://hooks.example.com/a")
        for url in [
            "https://allowed@evil/",
            "https://hooks.example.com@evil.net/a",
            "https://hooks.example.com:443@evil.net/a",
            "https://user:pw@hooks.example.com/a",
            "https://evil.net#@hooks.example.com/a",
            "https://hooks.example.com/a#frag",
            "https://evil.net\\@hooks.example.com/a",
            "https://hooks.example.com\\.evil.net/a",
            "https://hooks.example.com/a b",
            "https://hööks.example.com/a",
            "https://hooks.exam%70le.com/a",
            "https://hooks.example.com/a/%zz",
            "https://hooks.example.com/a/%+1",
            " https://hooks.example.com/a",
            "https://hooks.example.com/a\n",
            "//hooks.example.com/a",
            "hooks.example.com/a",
            "https:///a",
        ] {
            #expect(l.allowed(url) == nil, "\(url)")
        }
    }

    @Test func dotSegmentsAndEncodedSlashesCannotClimbOutOfThePrefix() throws {
        let l = try list("https://hooks.example.com/a")
        for url in [
            "https://hooks.example.com/a/../admin",
            "https://hooks.example.com/a/..",
            "https://hooks.example.com/a/./b",
            "https://hooks.example.com/a/%2e%2e/admin",
            "https://hooks.example.com/a/%2E%2E/admin",
            "https://hooks.example.com/a/.%2e/admin",
            "https://hooks.example.com/a%2F..%2Fadmin",
            "https://hooks.example.com/a%2fb",
            "https://hooks.example.com/a/%5c..%5cadmin",
            "https://hooks.example.com/a/%00",
        ] {
            #expect(l.allowed(url) == nil, "\(url)")
        }
        // Escapes of unreserved characters are the characters themselves; others compare
        // in upper case, and are sent as judged.
        #expect(l.allowed("https://hooks.example.com/%61/b")?.url == "https://hooks.example.com/a/b")
        #expect(l.allowed("https://hooks.example.com/a/%7euser")?.url == "https://hooks.example.com/a/~user")
        #expect(l.allowed("https://hooks.example.com/a/x%3by")?.url == "https://hooks.example.com/a/x%3By")
        #expect(l.allowed("https://hooks.example.com/a/...")?.url == "https://hooks.example.com/a/...")
    }

    @Test func nothingIsAllowedByDefaultAndBadPrefixesAreRefused() throws {
        #expect(NotifyAllowList.none.allowed("https://hooks.example.com/") == nil)
        #expect(try NotifyAllowList([]).allowed("http://127.0.0.1/") == nil)
        for bad in ["hooks.example.com", "https://user@hooks.example.com/", "https://hooks.example.com/a?x=1", "file:///etc", "https://hooks.example.com/a/../b", "https://h:0/"] {
            let e = #expect(throws: KilnError.self, "\(bad)") { _ = try NotifyAllowList([bad]) }
            #expect(e?.message.contains("give a URL prefix such as https://hooks.example.com/services/") == true, "\(e?.message ?? "")")
        }
        // An entry with user information is named by its place, never shown.
        let e = #expect(throws: KilnError.self) { _ = try NotifyAllowList(["https://ok.example/", "https://a:pw-Secret@b/"]) }
        #expect(e?.message.hasPrefix("notify allow-list entry 2: it has user information") == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("pw-Secret") == false)
    }

    @Test func aParsedURLNeverEchoesItsText() {
        // Messages about a URL from a secret must not repeat it: the parser's reasons are fixed text.
        for url in ["https://t0ken@evil/", "https://h/a/%zzT0KEN", "https://h/T0KEN#x", "https://h:99999/T0KEN"] {
            do {
                _ = try URLText.parse(url)
                Issue.record("\(url) parsed")
            } catch let e as KilnError {
                #expect(!e.message.contains("T0KEN") && !e.message.contains("t0ken"), "\(e.message)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }
}
