FROM rockylinux:9
RUN yum install -y epel-release && yum clean all
RUN dnf install -y python3-pip
RUN pip3 install --no-cache-dir ansible
CMD ["ansible", "--version"]
