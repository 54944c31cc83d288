import Foundation
import Testing
@testable import DockerAPI

@Suite("Registry credentials: X-Registry-Auth and Bearer challenges")
struct RegistryCredentialsTests {
    @Test("X-Registry-Auth is URL-safe base64 with padding of {username, password}")
    func registryAuthHeader() throws {
        // A password whose standard base64 holds '+' and '/', and whose length needs padding.
        let credentials = RegistryCredentials(user: "agent-1", password: "??>>??~~")
        let header = credentials.registryAuthHeader
        #expect(!header.contains("+") && !header.contains("/"), "podman decodes with Go's URL-safe alphabet")
        #expect(header.count % 4 == 0 && header.hasSuffix("="), "unpadded fails with unexpected EOF")
        let standard = header.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        let decoded = try JSONSerialization.jsonObject(with: Data(base64Encoded: standard)!) as? [String: String]
        #expect(decoded == ["username": "agent-1", "password": "??>>??~~"])
        #expect("\(credentials)" == "agent-1:***", "never the password")
        #expect(RegistryCredentials.anonymousHeader == "e30=")
    }

    @Test("a Bearer challenge: realm, service and a scope with commas and colons")
    func challenge() throws {
        let c = try #require(BearerChallenge(header: #"Bearer realm="http://127.0.0.1:7070/auth/token",service="kiln-registry",scope="repository:demo:pull,push""#))
        #expect(c.realm == "http://127.0.0.1:7070/auth/token")
        #expect(c.service == "kiln-registry")
        #expect(c.scope == "repository:demo:pull,push")
        #expect(c.tokenURL == "http://127.0.0.1:7070/auth/token?service=kiln-registry&scope=repository%3Ademo%3Apull%2Cpush")
        let bare = try #require(BearerChallenge(header: "bearer realm=https://auth.example/token"))
        #expect(bare.realm == "https://auth.example/token" && bare.service == nil && bare.tokenURL == "https://auth.example/token")
        #expect(BearerChallenge(header: #"Basic realm="registry""#) == nil)
        #expect(BearerChallenge(header: #"Bearer service="x""#) == nil, "no realm")
    }
}
