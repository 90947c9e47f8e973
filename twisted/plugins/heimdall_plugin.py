from twisted.application.service import ServiceMaker

heimdall = ServiceMaker("heimdall", "heimdall.tap", "A dynamic HTTP load balancer.", "heimdall")
