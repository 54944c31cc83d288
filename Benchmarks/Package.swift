// swift-tools-version:6.0
import PackageDescription

// kiln-bench: Kiln's benchmarks, outside the product (Benchmarks/README.md).
//   swift build -c release --product kiln                     (in the repository: what is measured)
//   swift build -c release --package-path Benchmarks          (kiln-bench itself)
//   Benchmarks/.build/release/kiln-bench ring | farm | deploy
//
// A path dependency is known by its folder's name, and a clone may be named anything.
let kiln = String(Context.packageDirectory.split(separator: "/").dropLast().last ?? "kiln")

let package = Package(
    name: "kiln-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.20.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "kiln-bench",
            dependencies: [
                .product(name: "FarmHarness", package: kiln),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
