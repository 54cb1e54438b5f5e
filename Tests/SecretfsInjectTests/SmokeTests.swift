import Testing
@testable import SecretfsInject

@Test func smoke() {
    print(rewriteExpr("`Bearer ${secrets.A}` + secrets?.[\"A\"] /2/ 1 + /secrets.A/.source", ["A": "x\"y"]))
    print(rewriteExpr("secrets[key] + secrets + { secrets } + 'abc", [:]))
}
